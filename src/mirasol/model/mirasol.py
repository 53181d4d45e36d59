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

from mirasol.config import BACKBONE_KEYS, IGNORE_INDEX, ConfigError, MirasolConfig
from mirasol.errors import CheckpointError
from mirasol.model import generation
from mirasol.model.av_model import AVModel
from mirasol.model.chunks import split_chunks
from mirasol.model.combiner import build_combiner
from mirasol.model.encoders import AudioEncoder, VideoEncoder
from mirasol.model.layers import EMBED_STD, Block
from mirasol.model.text_decoder import TextDecoder

if TYPE_CHECKING:
    from mirasol.model.stream import MediaStream



@dataclass
class MirasolOutput:
    loss: torch.Tensor | None
    text_loss: torch.Tensor | None
    latent_loss: torch.Tensor | None
    logits: torch.Tensor | None
    contrastive_loss: torch.Tensor | None = None  # cfg.av_contrastive_weight > 0 only


class Mirasol(nn.Module):
    """The whole model. Pretrained parts (cfg.text_backbone / video_backbone / audio_backbone) come
    in as built modules (model/backbones.py wrappers, made by `Mirasol.build`, which
    reads the folders): `text_decoder`, `video_encoder`, `audio_encoder`."""

    # config key (BACKBONE_KEYS) -> the wrapped HF module
    BACKBONES = {"text_backbone": "text_decoder.lm", "video_backbone": "video_encoder.encoder",
                 "audio_backbone": "audio_encoder.encoder"}

    def __init__(self, cfg: MirasolConfig, text_decoder: nn.Module | None = None,
                 video_encoder: nn.Module | None = None, audio_encoder: nn.Module | None = None):
        super().__init__()
        for key, given in (("text_backbone", text_decoder), ("video_backbone", video_encoder),
                           ("audio_backbone", audio_encoder)):
            if getattr(cfg, key) is not None and given is None:
                raise ValueError(f"config key '{key}' names a pretrained folder: build the model with "
                                 "Mirasol.build(cfg), which loads it (needs the `hf` extra)")
        self.cfg = cfg
        self.video_encoder = video_encoder or VideoEncoder(cfg)
        self.audio_encoder = audio_encoder or AudioEncoder(cfg)
        self.video_proj = nn.Linear(self.video_encoder.out_dim, cfg.av_dim)
        self.audio_proj = nn.Linear(self.audio_encoder.out_dim, cfg.av_dim)
        self.video_proj.unit_scale = self.audio_proj.unit_scale = True
        self.modality = nn.Parameter(torch.randn(2, cfg.av_dim) * EMBED_STD)  # video, audio
        self.combiner = build_combiner(cfg, self.video_encoder.grid, self.audio_encoder.grid)
        if cfg.av_contrastive_weight > 0:  # projection heads of the audio-video InfoNCE loss
            self.contrast_video = nn.Linear(cfg.av_dim, cfg.av_dim)
            self.contrast_audio = nn.Linear(cfg.av_dim, cfg.av_dim)
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
        v, a = self.modality_tokens(video_chunks, audio_chunks)
        return torch.cat([v, a], dim=2)

    def modality_tokens(self, video_chunks: torch.Tensor, audio_chunks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each chunk's video tokens [B, T, Nv, D] and audio tokens [B, T, Na, D] (projected, with
        modality embeddings): what `chunk_tokens` concatenates."""
        b, t = video_chunks.shape[:2]
        v = self.video_proj(self.video_encoder(video_chunks.flatten(0, 1))) + self.modality[0]
        a = self.audio_proj(self.audio_encoder(audio_chunks.flatten(0, 1))) + self.modality[1]
        return v.reshape(b, t, *v.shape[1:]), a.reshape(b, t, *a.shape[1:])

    def contrastive_loss(self, v: torch.Tensor, a: torch.Tensor, chunk_mask: torch.Tensor | None = None) -> torch.Tensor:
        """InfoNCE between each chunk's mean video token and mean audio token (v [B, T, Nv, D], a
        [B, T, Na, D]), both directions; a chunk's own sound is the positive, every other real chunk
        of every clip in the batch a negative."""
        ev = F.normalize(self.contrast_video(v.mean(2)).flatten(0, 1).float(), dim=-1)
        ea = F.normalize(self.contrast_audio(a.mean(2)).flatten(0, 1).float(), dim=-1)
        if chunk_mask is not None:
            keep = chunk_mask.flatten().bool()
            ev, ea = ev[keep], ea[keep]
        if ev.shape[0] < 2:
            return ev.new_zeros(())
        logits = ev @ ea.T / self.cfg.av_contrastive_temperature
        target = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))

    def combine(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Encode each chunk independently and fuse it: -> combiner features z [B, T, m, D]."""
        return self.combiner(self.chunk_tokens(*split_chunks(video, audio, self.cfg)))

    def encode_media(self, video: torch.Tensor, audio: torch.Tensor, max_context_chunks: int | None = None) -> torch.Tensor:
        """AV latents h [B, T, m, D]; latents of chunk t depend only on chunks <= t. Any number of
        chunks T works (chunk-index positions are sinusoidal). `max_context_chunks` W: the AV
        model's attention sees only the last W chunks, as `stream(max_context_chunks=W)` does."""
        return self.av_model(self.combine(video, audio), window=max_context_chunks)

    def stream(self, max_context_chunks: int | None = None, keep_latents: int | None = None) -> "MediaStream":
        """A streaming session: `push` chunks one at a time (constant cost per chunk), then
        `generate` / `score_candidates` about everything pushed so far. See model/stream.py."""
        from mirasol.model.stream import MediaStream

        return MediaStream(self, max_context_chunks, keep_latents)

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
        contrastive = None
        if self.cfg.av_contrastive_weight > 0 and labels is not None:
            v, a = self.modality_tokens(*split_chunks(video, audio, self.cfg))
            contrastive = self.contrastive_loss(v, a, chunk_mask)
            z = self.combiner(torch.cat([v, a], dim=2))
        else:
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
        if contrastive is not None:
            loss = loss + self.cfg.av_contrastive_weight * contrastive
        return MirasolOutput(loss, text_loss, latent_loss, logits, contrastive)

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

    # --- inference: the one path that ask, evaluate, validation, streaming and benchmarks use ------
    @staticmethod
    def decoder_memory(latents: torch.Tensor) -> torch.Tensor:
        """AV latents [B, T, m, D] (or already flat [B, M, D]) -> the decoder's memory [B, T*m, D]."""
        return latents.flatten(1, 2) if latents.dim() == 4 else latents

    @torch.no_grad()
    def generate_from_latents(self, latents: torch.Tensor, prompt_ids: torch.Tensor, max_new_tokens: int = 16,
                              memory_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Answer tokens [B, n] (ending in EOS, then padding) about media already encoded: latents
        [B, T, m, D] from `encode_media` or a stream (or [B, M, D] flat), memory_mask [B, M] False
        where the decoder must not look. kwargs: do_sample, temperature, top_k, top_p, num_beams,
        length_penalty, use_cache, generator; pad_id / eos_id override the config's (see
        model/generation.py)."""
        specials = {"pad_id": self.cfg.pad_token_id, "eos_id": self.cfg.eos_token_id, **kwargs}
        return generation.generate(self.text_decoder, self.decoder_memory(latents), prompt_ids, max_new_tokens,
                                   memory_mask=memory_mask, **specials)

    @torch.no_grad()
    def score_candidates_from_latents(self, latents: torch.Tensor, prompt_ids: torch.Tensor, candidate_ids,
                                      memory_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Log-likelihood [B, C] of each candidate answer about media already encoded (see
        generation.score_candidates for candidate_ids and kwargs)."""
        specials = {"pad_id": self.cfg.pad_token_id, "eos_id": self.cfg.eos_token_id, **kwargs}
        return generation.score_candidates(self.text_decoder, self.decoder_memory(latents), prompt_ids,
                                           candidate_ids, memory_mask=memory_mask, **specials)

    def generate(self, video, audio, prompt_ids, max_new_tokens: int = 16, chunk_mask=None,
                 max_context_chunks: int | None = None, **kwargs) -> torch.Tensor:
        """Answer tokens [B, n] about raw media: encode_media, then generate_from_latents."""
        with torch.no_grad():
            latents = self.encode_media(video, audio, max_context_chunks)
        return self.generate_from_latents(latents, prompt_ids, max_new_tokens,
                                          memory_mask=self.memory_mask(chunk_mask, video), **kwargs)

    def score_candidates(self, video, audio, prompt_ids, candidate_ids, chunk_mask=None,
                         max_context_chunks: int | None = None, **kwargs) -> torch.Tensor:
        """Log-likelihood [B, C] of each candidate answer about raw media."""
        with torch.no_grad():
            latents = self.encode_media(video, audio, max_context_chunks)
        return self.score_candidates_from_latents(latents, prompt_ids, candidate_ids,
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
        """Load a save_pretrained model.safetensors; tensors it leaves out must be frozen backbone ones.
        A damaged file, or one that does not fit this model, raises CheckpointError naming the file."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(file), device=str(device))
        except (SafetensorError, OSError) as err:
            if isinstance(err, FileNotFoundError):
                raise
            raise CheckpointError(f"{file}: not a readable safetensors file ({err}); the file is damaged") from None
        try:
            missing, unexpected = self.load_state_dict(state, strict=False)
        except RuntimeError as err:  # other shapes
            raise _misfit(file, err) from None
        expected_missing = set(self.state_dict()) - set(self.trained_state_dict())
        missing = [k for k in missing if k not in expected_missing]
        if missing or unexpected:
            raise _misfit(file, f"missing {missing[:5]}, unexpected {unexpected[:5]} (was it saved with other "
                                "backbones, train.freeze or train.lora settings?)")

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
        if getattr(self, "backbone_info", None):  # set by Mirasol.build
            tmp = path / "backbones.json.tmp"
            tmp.write_text(json.dumps(self.backbone_info, indent=2, sort_keys=True))
            tmp.replace(path / "backbones.json")
        save_file(self.trained_state_dict(), str(path / "model.safetensors.tmp"))
        (path / "model.safetensors.tmp").replace(path / "model.safetensors")

    @classmethod
    def build(cls, cfg: MirasolConfig, freeze=(), lora: dict | None = None) -> "Mirasol":
        """The one way to make a model from a config: plain, or with the pretrained backbones the
        config names (read from their local folders; needs the `hf` extra), then frozen and given
        LoRA adapters as asked (train.freeze, train.lora). Call `pretrained.resolve_config` on a
        config with a text or audio backbone first (the training loop does)."""
        if not any(getattr(cfg, key) for key in BACKBONE_KEYS):
            if freeze or lora:
                raise ConfigError("config keys 'train.freeze' / 'train.lora' need a pretrained backbone (model.*_backbone)")
            return cls(cfg)
        from mirasol.model import pretrained

        parts, info = pretrained.load_backbones(cfg)
        model = cls(cfg, **parts)
        pretrained.apply_freeze_and_lora(model, freeze, lora)
        model.backbone_info = {**info, "freeze": sorted(freeze), "lora": lora}
        return model

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu",
                        config: MirasolConfig | None = None, revision: str | None = None) -> "Mirasol":
        """The one way to load a saved model (a run directory, a checkpoint folder, a `mirasol export`
        folder, or the Hub repository id of one: mirasol/model/hub.py): its config.json (or `config`, when
        the caller has parsed it already), the backbones it names (hash-checked against
        backbones.json) and model.safetensors. In eval mode on `device`."""
        from mirasol.model.hub import local_folder

        path = local_folder(path, revision)
        config_file, weights = path / "config.json", path / "model.safetensors"
        for needed in (config_file, weights):
            if not needed.exists():
                raise FileNotFoundError(f"{needed} not found: {path} is not a saved Mirasol model or run directory")
        if config is None:
            try:
                raw = json.loads(config_file.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise CheckpointError(f"{config_file}: not valid JSON ({err}); the file is damaged") from None
            config = MirasolConfig.from_dict(raw["model"] if isinstance(raw.get("model"), dict) else raw)
        freeze, lora = (), None
        if any(getattr(config, key) for key in BACKBONE_KEYS):
            from mirasol.model import pretrained

            freeze, lora = pretrained.saved_backbone_settings(config, path)  # folders present, hashes equal
        model = cls.build(config, freeze, lora)
        model.load_trained_weights(weights, device=device)
        return model.to(device).eval()


def _misfit(file, detail) -> CheckpointError:
    detail = " ".join(str(detail).split())  # load_state_dict's list of keys and shapes; the first are enough
    if len(detail) > 300:
        detail = detail[:detail.rfind(". ", 0, 300) + 1] + " ..."
    return CheckpointError(f"{file} does not fit the model this config builds; were the model settings "
                           f"changed since it was trained? ({detail})")
