"""Model and media configuration: one validated dataclass, plus named presets.

Media settings (fps, image size, mel bins, ...) live in the same config as the model sizes,
because the two must agree: the model's chunk shapes are derived from them, and a run directory's
config.json must be enough to decode a new video exactly as training did.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass
from typing import Any

from mirasol.choices import (AUDIO_FEATURES, CLIP_WINDOWS, COMBINERS, LATENT_LOSSES, MISSING_AUDIO,  # noqa: F401
                             RESIZE_MODES, STORES)
from mirasol.errors import MirasolError

# Names every layer shares, defined once here at the bottom.
IGNORE_INDEX = -100  # label of a token that is not scored (prompt, padding): PyTorch's cross-entropy default
BACKBONE_KEYS = ("text_backbone", "video_backbone", "audio_backbone")  # config keys naming pretrained folders
HF_EXTRA = 'pip install -e ".[hf]"  (transformers and peft)'


def require_hf(what: str) -> None:
    """Fail early, naming the extra to install, when `what` needs transformers and it is missing."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise ConfigError(f"{what} needs the optional `hf` extra: {HF_EXTRA}") from None


class ConfigError(MirasolError, ValueError):
    """A config key is unknown, or values are inconsistent. The message names the key."""


@dataclass
class MirasolConfig:
    # --- media and time chunking -------------------------------------------------------------
    num_chunks: int = 4  # T: time chunks per clip
    frames_per_chunk: int = 2  # video frames in each chunk
    fps: float = 2.0  # video frames sampled per second (by timestamp)
    image_size: int = 32  # frames are resized to image_size x image_size
    sample_rate: int = 16000  # audio is resampled to this rate, mono
    n_mels: int = 32  # log-mel bins
    audio_win_ms: float = 25.0
    audio_hop_ms: float = 10.0  # one audio frame per hop
    resize: str = "crop"  # crop | letterbox
    # Which part of a longer video to keep: start | center (one clip_seconds window), or uniform
    # (chunk t covers span t of T equal spans of the whole video or the row's [start, end]).
    clip_window: str = "start"
    missing_audio: str = "zeros"  # file without an audio stream: zeros | skip | error
    # log_mel: ours (media/features.py); whisper: Whisper's own log-mel (set by audio_backbone)
    audio_features: str = "log_mel"

    # --- video encoder: tubelets of tubelet_size frames x patch_size^2 pixels ----------------
    patch_size: int = 8
    tubelet_size: int = 2
    video_dim: int = 64
    video_layers: int = 2
    video_heads: int = 4

    # --- audio encoder: log-mel patches of audio_patch_mels x audio_patch_frames ------------
    audio_patch_mels: int = 16
    audio_patch_frames: int = 10
    audio_dim: int = 64
    audio_layers: int = 2
    audio_heads: int = 4

    # --- combiner: fuses one chunk's video + audio tokens into m tokens ---------------------
    combiner: str = "transformer"  # transformer | ttm
    combiner_tokens: int = 8  # m
    combiner_layers: int = 2
    ttm_memory_tokens: int = 16  # k, TTM only
    ttm_read_tokens: int = 8  # r, TTM only

    # --- AV autoregressive model over the T x m chunk tokens --------------------------------
    av_dim: int = 128  # width of combiner, AV model and its latents
    av_layers: int = 2
    av_heads: int = 4
    latent_loss: str = "mse"  # mse | cosine
    latent_loss_weight: float = 1.0
    mask_ratio: float = 0.0  # fraction of combiner outputs replaced by a mask token in training
    # Each chunk's AV-model input also carries a small MLP of its difference from the previous chunk's
    # combiner output: what changed between neighbouring chunks (a colour change, an onset) becomes a
    # per-chunk feature, which the decoder can count like any other event (benchmarks/counting.md).
    chunk_delta: bool = False
    # Audio-video contrastive loss (InfoNCE) between each chunk's pooled video and audio tokens,
    # negatives = every other chunk of every clip in the batch; weight 0 = off (no extra weights).
    av_contrastive_weight: float = 0.0
    av_contrastive_temperature: float = 0.1

    # --- text decoder -------------------------------------------------------------------------
    vocab_size: int = 512
    text_dim: int = 128
    text_layers: int = 2
    text_heads: int = 4
    max_text_len: int = 64
    cross_attn_gate: bool = False  # tanh gate initialised at 0 (Flamingo-style)
    rope_theta: float = 10000.0
    text_loss_weight: float = 1.0
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    sep_token_id: int = 3

    # --- pretrained parts (local Hugging Face folders; need the `hf` extra) ---------------------
    # A causal LM as the text decoder (its tokenizer replaces ours; vocab_size and the special ids
    # are then taken from it), an image encoder per frame, the Whisper encoder per audio chunk.
    text_backbone: str | None = None
    video_backbone: str | None = None
    audio_backbone: str | None = None
    cross_attn_every: int = 1  # text backbone: a gated cross-attention layer after every k-th LM layer

    # --- shared ---------------------------------------------------------------------------------
    mlp_ratio: float = 4.0
    dropout: float = 0.0

    # ------------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.validate()

    # Derived sizes: read-only so that they can never disagree with the fields above.
    @property
    def num_frames(self) -> int:
        return self.num_chunks * self.frames_per_chunk

    @property
    def chunk_seconds(self) -> float:
        return self.frames_per_chunk / self.fps

    @property
    def clip_seconds(self) -> float:
        return self.num_chunks * self.chunk_seconds

    @property
    def audio_frames_per_chunk(self) -> int:
        return round(self.chunk_seconds * 1000.0 / self.audio_hop_ms)

    @property
    def audio_frames(self) -> int:
        return self.num_chunks * self.audio_frames_per_chunk

    @property
    def hop_length(self) -> int:
        return round(self.sample_rate * self.audio_hop_ms / 1000.0)

    @property
    def win_length(self) -> int:
        return round(self.sample_rate * self.audio_win_ms / 1000.0)

    @property
    def video_tokens_per_chunk(self) -> int:
        return (self.frames_per_chunk // self.tubelet_size) * (self.image_size // self.patch_size) ** 2

    @property
    def audio_tokens_per_chunk(self) -> int:
        return (self.n_mels // self.audio_patch_mels) * (self.audio_frames_per_chunk // self.audio_patch_frames)

    # ------------------------------------------------------------------------------------------
    def validate(self) -> None:
        def need(ok: bool, key: str, msg: str) -> None:
            if not ok:
                raise ConfigError(f"config key '{key}': {msg}")

        for key in ("num_chunks", "frames_per_chunk", "image_size", "sample_rate", "n_mels", "patch_size",
                    "tubelet_size", "video_dim", "video_layers", "video_heads", "audio_patch_mels",
                    "audio_patch_frames", "audio_dim", "audio_layers", "audio_heads", "combiner_tokens",
                    "combiner_layers", "ttm_memory_tokens", "ttm_read_tokens", "av_dim", "av_layers",
                    "av_heads", "vocab_size", "text_dim", "text_layers", "text_heads", "max_text_len",
                    "cross_attn_every"):
            value = getattr(self, key)
            need(isinstance(value, int) and not isinstance(value, bool) and value > 0, key,
                 f"must be a positive integer, got {value!r}")
        need(self.fps > 0, "fps", f"must be > 0, got {self.fps}")
        need(self.audio_hop_ms > 0 and self.audio_win_ms >= self.audio_hop_ms, "audio_win_ms",
             f"window ({self.audio_win_ms} ms) must be >= hop ({self.audio_hop_ms} ms) > 0")
        need(self.combiner in COMBINERS, "combiner", f"must be one of {COMBINERS}, got {self.combiner!r}")
        need(self.latent_loss in LATENT_LOSSES, "latent_loss",
             f"must be one of {LATENT_LOSSES}, got {self.latent_loss!r}")
        need(self.resize in RESIZE_MODES, "resize", f"must be one of {RESIZE_MODES}, got {self.resize!r}")
        need(self.clip_window in CLIP_WINDOWS, "clip_window",
             f"must be one of {CLIP_WINDOWS}, got {self.clip_window!r}")
        need(self.missing_audio in MISSING_AUDIO, "missing_audio",
             f"must be one of {MISSING_AUDIO}, got {self.missing_audio!r}")
        need(self.audio_features in AUDIO_FEATURES, "audio_features",
             f"must be one of {AUDIO_FEATURES}, got {self.audio_features!r}")
        for key in ("text_backbone", "video_backbone", "audio_backbone"):
            value = getattr(self, key)
            need(value is None or (isinstance(value, str) and value.strip() != ""), key,
                 f"must be the path of a local Hugging Face model folder, got {value!r}")
        need(0.0 <= self.mask_ratio < 1.0, "mask_ratio", f"must be in [0, 1), got {self.mask_ratio}")
        need(self.av_contrastive_weight >= 0.0, "av_contrastive_weight", f"must be >= 0, got {self.av_contrastive_weight}")
        need(self.av_contrastive_temperature > 0.0, "av_contrastive_temperature",
             f"must be > 0, got {self.av_contrastive_temperature}")
        need(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")

        # Sizes that must divide, reported with the numbers involved.
        need(self.image_size % self.patch_size == 0, "image_size",
             f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}")
        need(self.frames_per_chunk % self.tubelet_size == 0, "frames_per_chunk",
             f"frames_per_chunk={self.frames_per_chunk} is not divisible by tubelet_size={self.tubelet_size}")
        need(self.n_mels % self.audio_patch_mels == 0, "n_mels",
             f"n_mels={self.n_mels} is not divisible by audio_patch_mels={self.audio_patch_mels}")
        exact = self.chunk_seconds * 1000.0 / self.audio_hop_ms
        need(math.isclose(exact, round(exact), abs_tol=1e-6), "fps",
             f"a chunk lasts frames_per_chunk/fps = {self.frames_per_chunk}/{self.fps} s = {self.chunk_seconds:g} s, "
             f"which is not a whole number of {self.audio_hop_ms:g} ms audio hops ({exact:g}); "
             "audio and video chunks could not cover the same seconds")
        need(self.audio_frames_per_chunk % self.audio_patch_frames == 0, "audio_patch_frames",
             f"audio frames per chunk ({self.audio_frames_per_chunk}) is not divisible by "
             f"audio_patch_frames={self.audio_patch_frames}")
        need(abs(self.sample_rate * self.audio_hop_ms / 1000.0 - self.hop_length) < 1e-6, "audio_hop_ms",
             f"hop of {self.audio_hop_ms} ms is not a whole number of samples at {self.sample_rate} Hz")
        for dim_key, heads_key in (("video_dim", "video_heads"), ("audio_dim", "audio_heads"),
                                   ("av_dim", "av_heads"), ("text_dim", "text_heads")):
            dim, heads = getattr(self, dim_key), getattr(self, heads_key)
            need(dim % heads == 0, dim_key, f"{dim_key}={dim} is not divisible by {heads_key}={heads}")
        need((self.text_dim // self.text_heads) % 2 == 0, "text_dim",
             f"text head size {self.text_dim // self.text_heads} must be even for rotary positions")
        specials = {k: getattr(self, k) for k in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id")}
        for key, value in specials.items():
            need(0 <= value < self.vocab_size, key, f"{value} is outside the vocabulary (vocab_size={self.vocab_size})")
        # bos may equal eos (GPT-2 uses <|endoftext|> for both); pad and sep must be unique.
        others = lambda key: [v for k, v in specials.items() if k != key]  # noqa: E731
        need(specials["pad_token_id"] not in others("pad_token_id") and specials["sep_token_id"] not in
             others("sep_token_id"), "pad_token_id", f"special token ids must differ, got {specials}")
        if self.text_backbone is None:
            need(self.bos_token_id != self.eos_token_id, "bos_token_id", f"special token ids must differ, got {specials}")

    # ------------------------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], base: "MirasolConfig | None" = None) -> "MirasolConfig":
        """Build a config from `base` (or the defaults) with `values` applied; unknown keys are errors.

        `num_frames` is accepted as a convenience (total frames per clip) and must divide evenly by
        `num_chunks`.
        """
        values = dict(values)
        known = set(cls.keys())
        unknown = [k for k in values if k not in known and k != "num_frames"]
        if unknown:
            key = unknown[0]
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{key}'{hint} (valid keys: {', '.join(sorted(known))})")
        merged = dataclasses.asdict(base) if base is not None else {}
        merged.update(values)
        if "num_frames" in merged:
            num_frames = merged.pop("num_frames")
            chunks = merged.get("num_chunks", cls.num_chunks)
            if not isinstance(num_frames, int) or num_frames <= 0 or num_frames % chunks:
                raise ConfigError(f"config key 'num_frames': num_frames={num_frames} is not divisible by "
                                  f"num_chunks={chunks}")
            merged["frames_per_chunk"] = num_frames // chunks
        # Let YAML/JSON ints stand in for floats.
        for f in dataclasses.fields(cls):
            if f.type in ("float",) and isinstance(merged.get(f.name), int) and not isinstance(merged[f.name], bool):
                merged[f.name] = float(merged[f.name])
        return cls(**merged)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "MirasolConfig":
        if name not in PRESETS:
            raise ConfigError(f"unknown preset '{name}' (choose from {', '.join(PRESETS)})")
        return cls.from_dict({**PRESETS[name], **overrides})

    def replace(self, **overrides: Any) -> "MirasolConfig":
        return type(self).from_dict(overrides, base=self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# Presets. `tiny` trains in minutes on 2 CPU cores; `mirasol3b` follows the paper's scale
# (16 chunks x 8 frames = 128 frames, m = 32 tokens per chunk, ~3B parameters, about half in the
# audio-video part). Sizes of the paper's encoders are not all published; ours are chosen to match
# the published totals.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {},
    "small": dict(
        num_chunks=8, frames_per_chunk=4, fps=4.0, image_size=64, n_mels=64,
        patch_size=16, tubelet_size=2, video_dim=192, video_layers=4, video_heads=4,
        audio_patch_mels=16, audio_patch_frames=20, audio_dim=192, audio_layers=4, audio_heads=4,
        combiner_tokens=16, combiner_layers=2, ttm_memory_tokens=32, ttm_read_tokens=16,
        av_dim=256, av_layers=4, av_heads=8, vocab_size=8192,
        text_dim=384, text_layers=6, text_heads=6, max_text_len=128,
    ),
    "base": dict(
        num_chunks=8, frames_per_chunk=8, fps=4.0, image_size=224, n_mels=128,
        patch_size=16, tubelet_size=2, video_dim=768, video_layers=12, video_heads=12,
        audio_patch_mels=16, audio_patch_frames=20, audio_dim=768, audio_layers=12, audio_heads=12,
        combiner_tokens=32, combiner_layers=2, ttm_memory_tokens=64, ttm_read_tokens=32,
        av_dim=768, av_layers=6, av_heads=12, vocab_size=32000,
        text_dim=768, text_layers=12, text_heads=12, max_text_len=256,
    ),
    "mirasol3b": dict(
        num_chunks=16, frames_per_chunk=8, fps=4.0, image_size=224, n_mels=128,
        patch_size=16, tubelet_size=2, video_dim=1408, video_layers=32, video_heads=16,
        audio_patch_mels=16, audio_patch_frames=20, audio_dim=1024, audio_layers=16, audio_heads=16,
        combiner_tokens=32, combiner_layers=4, ttm_memory_tokens=128, ttm_read_tokens=32,
        av_dim=1536, av_layers=16, av_heads=16, vocab_size=32000,
        text_dim=2048, text_layers=22, text_heads=16, max_text_len=512, cross_attn_gate=True,
    ),
}
