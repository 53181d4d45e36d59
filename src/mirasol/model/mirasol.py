"""Mirasol3B: the whole model, read top to bottom.

    video [B, F, 3, S, S], audio [B, n_mels, A]
      -> split into T time chunks (chunk t of both covers the same seconds)
      -> VideoEncoder, AudioEncoder per chunk -> project to av_dim + modality embeddings
      -> Combiner (m tokens per chunk) -> z [B, T, m, D]
      -> AVModel (block-causal over chunks) -> latents h [B, T, m, D]
      -> TextDecoder (causal, cross-attends to h) -> answer tokens

No file I/O here except `save_pretrained` / `from_pretrained`, which only move tensors and the config.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from mirasol.config import MirasolConfig
from mirasol.model import generation
from mirasol.model.av_model import AVModel
from mirasol.model.combiner import build_combiner
from mirasol.model.encoders import AudioEncoder, VideoEncoder
from mirasol.model.layers import EMBED_STD, Block
from mirasol.model.text_decoder import TextDecoder

if TYPE_CHECKING:
    from mirasol.model.stream import MediaStream

IGNORE_INDEX = -100


@dataclass
class MirasolOutput:
    loss: torch.Tensor | None
    text_loss: torch.Tensor | None
    latent_loss: torch.Tensor | None
    logits: torch.Tensor | None


def split_chunks(video: torch.Tensor, audio: torch.Tensor, cfg: MirasolConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut video [B, F, 3, S, S] and audio [B, n_mels, A] into the same T consecutive time spans:
    chunk t = frames [t*f, (t+1)*f) and audio frames [t*a, (t+1)*a), i.e. seconds
    [t*chunk_seconds, (t+1)*chunk_seconds) of both. No stride, no overlap.
    Returns video [B, T, f, 3, S, S] and audio [B, T, n_mels, a]."""
    f, a = cfg.frames_per_chunk, cfg.audio_frames_per_chunk
    b, frames = video.shape[:2]
    if video.dim() != 5 or video.shape[2:] != (3, cfg.image_size, cfg.image_size):
        raise ValueError(f"video must be [B, F, 3, {cfg.image_size}, {cfg.image_size}], got {list(video.shape)}")
    if audio.dim() != 3 or audio.shape[1] != cfg.n_mels:
        raise ValueError(f"audio must be [B, n_mels={cfg.n_mels}, A], got {list(audio.shape)}")
    if frames % f:
        raise ValueError(f"video has {frames} frames, not a multiple of frames_per_chunk={f}")
    t = frames // f
    if audio.shape[2] != t * a:
        raise ValueError(f"audio has {audio.shape[2]} frames but {frames} video frames make {t} chunks, "
                         f"which need {t} x audio_frames_per_chunk={a} = {t * a} audio frames")
    video_chunks = video.reshape(b, t, f, *video.shape[2:])
    audio_chunks = audio.reshape(b, cfg.n_mels, t, a).permute(0, 2, 1, 3)
    return video_chunks, audio_chunks


class Mirasol(nn.Module):
    """The whole model. Pretrained parts (cfg.text_backbone / video_backbone / audio_backbone) come
    in as built modules (model/backbones.py wrappers, made by mirasol.pretrained.build_model, which
    reads the folders): `text_decoder`, `video_encoder`, `audio_encoder`."""

    BACKBONES = {"text_backbone": "text_decoder.lm", "video_backbone": "video_encoder.encoder",
                 "audio_backbone": "audio_encoder.encoder"}  # config key -> the wrapped HF module

    def __init__(self, cfg: MirasolConfig, text_decoder: nn.Module | None = None,
                 video_encoder: nn.Module | None = None, audio_encoder: nn.Module | None = None):
        super().__init__()
        for key, given in (("text_backbone", text_decoder), ("video_backbone", video_encoder),
                           ("audio_backbone", audio_encoder)):
            if getattr(cfg, key) is not None and given is None:
                raise ValueError(f"config key '{key}' names a pretrained folder: build the model with "
                                 "mirasol.pretrained.build_model(cfg), which loads it (needs the `hf` extra)")
        self.cfg = cfg
        self.video_encoder = video_encoder or VideoEncoder(cfg)
        self.audio_encoder = audio_encoder or AudioEncoder(cfg)
        self.video_proj = nn.Linear(self.video_encoder.out_dim, cfg.av_dim)
        self.audio_proj = nn.Linear(self.audio_encoder.out_dim, cfg.av_dim)
        self.video_proj.unit_scale = self.audio_proj.unit_scale = True
        self.modality = nn.Parameter(torch.randn(2, cfg.av_dim) * EMBED_STD)  # video, audio
        self.combiner = build_combiner(cfg, self.video_encoder.grid, self.audio_encoder.grid)
        self.av_model = AVModel(cfg)
        self.text_decoder = text_decoder or TextDecoder(cfg)
        pretrained = {id(m) for m in self.backbone_modules().values()}

        def init(module: nn.Module) -> None:  # as self.apply (children first), skipping pretrained parts
            if id(module) in pretrained or getattr(module, "keep_init", False):
                return
            for child in module.children():
                init(child)
            self._init_weights(module)
        init(self)

    def backbone_modules(self) -> dict[str, nn.Module]:
        """The pretrained Hugging Face modules in this model, by state-dict prefix."""
        return {prefix: self.get_submodule(prefix) for key, prefix in self.BACKBONES.items()
                if getattr(self.cfg, key) is not None}

    def _init_weights(self, module: nn.Module) -> None:
        # GPT-style: small normal weights and residual output projections scaled down with depth,
        # so that the deep media -> combiner -> AV -> text path starts near identity and trains
        # quickly (PyTorch's default fan-in init made every block's update large). Input
        # projections (patch embeddings, modality projections) keep unit scale instead, so that
        # content starts as large as the position and modality embeddings added to it.
        if isinstance(module, nn.Linear):
            depth = 2 * max(self.cfg.combiner_layers, self.cfg.av_layers,
                            *(() if self.cfg.video_backbone else (self.cfg.video_layers,)),
                            *(() if self.cfg.audio_backbone else (self.cfg.audio_layers,)),
                            *(() if self.cfg.text_backbone else (self.cfg.text_layers,)))
            if getattr(module, "unit_scale", False):
                std = module.in_features ** -0.5
            elif getattr(module, "residual_out", False):
                std = 0.02 / math.sqrt(depth)
            else:
                std = 0.02
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    # --- audio-video part -------------------------------------------------------------------
    def chunk_tokens(self, video_chunks: torch.Tensor, audio_chunks: torch.Tensor) -> torch.Tensor:
        """Encode each chunk independently: video [B, T, f, 3, S, S], audio [B, T, n_mels, a] ->
        the combiner's input tokens [B, T, N, D] (video then audio, with modality embeddings)."""
        b, t = video_chunks.shape[:2]
        v = self.video_proj(self.video_encoder(video_chunks.flatten(0, 1))) + self.modality[0]
        a = self.audio_proj(self.audio_encoder(audio_chunks.flatten(0, 1))) + self.modality[1]
        tokens = torch.cat([v, a], dim=1)
        return tokens.reshape(b, t, *tokens.shape[1:])

    def combine(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Encode each chunk independently and fuse it: -> combiner features z [B, T, m, D]."""
        return self.combiner(self.chunk_tokens(*split_chunks(video, audio, self.cfg)))

    def encode_media(self, video: torch.Tensor, audio: torch.Tensor, max_context_chunks: int | None = None) -> torch.Tensor:
        """AV latents h [B, T, m, D]; latents of chunk t depend only on chunks <= t. Any number of
        chunks T works (chunk-index positions are sinusoidal). `max_context_chunks` W: the AV
        model's attention sees only the last W chunks, as `stream(max_context_chunks=W)` does."""
        return self.av_model(self.combine(video, audio), window=max_context_chunks)

    def stream(self, max_context_chunks: int | None = None) -> "MediaStream":
        """A streaming session: `push` chunks one at a time (constant cost per chunk), then
        `generate` / `score_candidates` about everything pushed so far. See model/stream.py."""
        from mirasol.model.stream import MediaStream

        return MediaStream(self, max_context_chunks)

    # --- training -----------------------------------------------------------------------------
    def forward(self, video, audio, input_ids, labels=None, attention_mask=None, media_index=None,
                chunk_mask=None, return_logits: bool = True) -> MirasolOutput:
        """input_ids [B, L] = prompt + answer + EOS (padded with pad_token_id); labels [B, L] equal
        input_ids on answer positions and IGNORE_INDEX elsewhere (HF-style: shifted here).
        media_index [B] (optional): text row i asks about clip media_index[i] of video/audio, so
        several questions about one clip share its encoding; without it row i is clip i.
        chunk_mask [clips, T] (optional): False for chunks that are only padding (a clip shorter
        than the window); the text decoder does not attend to them and the latent loss skips them.
        return_logits=False (with labels): logits only where the loss needs them, none returned; the
        training loop's choice, since the answer is a few of a row's tokens."""
        memory_mask = self.memory_mask(chunk_mask, video)
        chunk_mask = None if memory_mask is None else chunk_mask
        z = self.combine(video, audio)
        h = self.av_model(z)
        if attention_mask is None:
            attention_mask = input_ids != self.cfg.pad_token_id
        if media_index is not None and memory_mask is not None:
            memory_mask = memory_mask[media_index]
        hidden = self.text_decoder(input_ids, memory=h.flatten(1, 2), attention_mask=attention_mask,
                                   memory_mask=memory_mask, memory_index=media_index)
        logits = self.text_decoder.logits(hidden) if return_logits or labels is None else None
        if labels is None:
            return MirasolOutput(None, None, None, logits)
        answer = labels[:, 1:] != IGNORE_INDEX  # position i predicts token i + 1
        scored = logits[:, :-1][answer] if logits is not None else self.text_decoder.logits(hidden[:, :-1][answer])
        text_loss = F.cross_entropy(scored.float(), labels[:, 1:][answer])
        latent_loss = self.av_model.latent_loss(h, z, chunk_mask) if self.cfg.latent_loss_weight else h.new_zeros(())
        loss = self.cfg.text_loss_weight * text_loss + self.cfg.latent_loss_weight * latent_loss
        return MirasolOutput(loss, text_loss, latent_loss, logits)

    def memory_mask(self, chunk_mask: torch.Tensor | None, video: torch.Tensor | None = None) -> torch.Tensor | None:
        """chunk_mask [B, T] -> a mask over the decoder's memory [B, T * m] (m latents per chunk).
        T is the number of chunks of `video` (any length), or cfg.num_chunks without it."""
        if chunk_mask is None:
            return None
        chunks = self.cfg.num_chunks if video is None else video.shape[1] // self.cfg.frames_per_chunk
        if chunk_mask.shape[-1] != chunks:
            raise ValueError(f"chunk_mask must be [B, {chunks}] (one per chunk of the video), got {list(chunk_mask.shape)}")
        if chunk_mask.all():
            return None  # nothing to hide: the unmasked path (and SDPA's fastest kernels)
        return chunk_mask.bool().repeat_interleave(self.cfg.combiner_tokens, dim=1)

    # --- inference ----------------------------------------------------------------------------
    def generate(self, video, audio, prompt_ids, max_new_tokens: int = 16, chunk_mask=None,
                 max_context_chunks: int | None = None, **kwargs) -> torch.Tensor:
        """Answer tokens [B, n] (ending in EOS, then padding). kwargs: do_sample, temperature,
        top_k, top_p, num_beams, length_penalty, use_cache, generator."""
        with torch.no_grad():
            memory = self.encode_media(video, audio, max_context_chunks).flatten(1, 2)
        return generation.generate(self.text_decoder, memory, prompt_ids, max_new_tokens,
                                   pad_id=self.cfg.pad_token_id, eos_id=self.cfg.eos_token_id,
                                   memory_mask=self.memory_mask(chunk_mask, video), **kwargs)

    def score_candidates(self, video, audio, prompt_ids, candidate_ids, chunk_mask=None,
                         max_context_chunks: int | None = None, **kwargs) -> torch.Tensor:
        """Log-likelihood [B, C] of each candidate answer (see generation.score_candidates)."""
        with torch.no_grad():
            memory = self.encode_media(video, audio, max_context_chunks).flatten(1, 2)
        return generation.score_candidates(self.text_decoder, memory, prompt_ids, candidate_ids,
                                           pad_id=self.cfg.pad_token_id, eos_id=self.cfg.eos_token_id,
                                           memory_mask=self.memory_mask(chunk_mask, video), **kwargs)

    # --- bookkeeping --------------------------------------------------------------------------
    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Recompute every transformer block in the backward pass instead of keeping its activations."""
        for module in self.modules():
            if isinstance(module, Block):
                module.checkpoint = enabled

    def num_parameters(self) -> dict[str, int]:
        """Parameters per part; 'audio_video' is everything before the text decoder."""
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        parts = {
            "video_encoder": count(self.video_encoder),
            "audio_encoder": count(self.audio_encoder),
            "combiner": count(self.combiner) + count(self.video_proj) + count(self.audio_proj) + self.modality.numel(),
            "av_model": count(self.av_model),
            "text_decoder": count(self.text_decoder),
        }
        parts["audio_video"] = sum(v for k, v in parts.items() if k != "text_decoder")
        parts["total"] = count(self)
        return parts

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """What save_pretrained writes: every tensor except the frozen weights (and buffers) of the
        pretrained backbones, which are rebuilt from their folders. Tied tensors once."""
        skip = set()
        for prefix, module in self.backbone_modules().items():
            skip |= {f"{prefix}.{n}" for n, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}
            skip |= {f"{prefix}.{n}" for n, _ in module.named_buffers(remove_duplicate=False)}
        state, seen = {}, set()
        for name, tensor in self.state_dict().items():
            key = (tensor.data_ptr(), tensor.shape) if tensor.numel() else None
            if name in skip or (key is not None and key in seen):
                continue
            seen.add(key)
            state[name] = tensor.detach().contiguous()
        return state

    def load_trained_weights(self, file: str | Path, device: str | torch.device = "cpu") -> None:
        """Load a save_pretrained model.safetensors; tensors it leaves out must be frozen backbone ones."""
        from safetensors.torch import load_file

        state = load_file(str(file), device=str(device))
        missing, unexpected = self.load_state_dict(state, strict=False)
        expected_missing = set(self.state_dict()) - set(self.trained_state_dict())
        missing = [k for k in missing if k not in expected_missing]
        if missing or unexpected:
            raise ValueError(f"{file} does not match this model: missing {missing[:5]}, unexpected {unexpected[:5]} "
                             "(was it saved with other backbones, train.freeze or train.lora settings?)")

    def save_pretrained(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config_file = path / "config.json"
        config = json.loads(config_file.read_text()) if config_file.exists() else {}
        if isinstance(config.get("model"), dict):  # a run directory's config: keep its other sections
            config["model"] = self.cfg.to_dict()
        else:
            config = self.cfg.to_dict()
        tmp = path / "config.json.tmp"
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True))
        tmp.replace(config_file)
        if getattr(self, "backbone_info", None):  # set by mirasol.pretrained.build_model
            tmp = path / "backbones.json.tmp"
            tmp.write_text(json.dumps(self.backbone_info, indent=2, sort_keys=True))
            tmp.replace(path / "backbones.json")
        save_file(self.trained_state_dict(), str(path / "model.safetensors.tmp"))
        (path / "model.safetensors.tmp").replace(path / "model.safetensors")

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> "Mirasol":
        path = Path(path)
        config_file, weights = path / "config.json", path / "model.safetensors"
        for needed in (config_file, weights):
            if not needed.exists():
                raise FileNotFoundError(f"{needed} not found: {path} is not a saved Mirasol model or run directory")
        config = json.loads(config_file.read_text())
        cfg = MirasolConfig.from_dict(config.get("model", config) if isinstance(config.get("model"), dict) else config)
        if any(getattr(cfg, key) for key in cls.BACKBONES):
            from mirasol.pretrained import build_saved_model  # reads the backbone folders, checks their hashes

            model = build_saved_model(cfg, path)
        else:
            model = cls(cfg)
        model.load_trained_weights(weights)
        return model.to(device).eval()
