"""Pretrained parts as Mirasol modules. Each wraps an already built Hugging Face module (this file
imports no `transformers`; mirasol/model/pretrained.py loads the folders):

- LMDecoder: a causal LM as the text decoder, with a tanh-gated cross-attention layer to the AV
  latents after every k-th LM layer (Flamingo-style, gates start at 0, so the LM is unchanged at
  init). Same interface as TextDecoder (forward / logits / context_kv / caches), so generation,
  beam search and score_candidates run on it unchanged.
- ImageBackbone: an image encoder (ViT, CLIP vision, SigLIP vision) on every frame of a chunk,
  patch tokens averaged over each tubelet's frames, so a chunk still yields its own tokens.
- WhisperBackbone: the Whisper encoder on each chunk's (Whisper) log-mel, nothing else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mirasol.config import MirasolConfig
from mirasol.model.layers import MLP, Attention


class GatedCrossBlock(nn.Module):
    """x + tanh(a) * CrossAttn(LN(x), latents); then x + tanh(b) * MLP(LN(x)). a = b = 0 at init."""

    def __init__(self, dim: int, heads: int, context_dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.cross = Attention(dim, heads, context_dim=context_dim, dropout=dropout)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio, dropout)
        self.mlp_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x, kv, mask=None):
        x = x + torch.tanh(self.attn_gate).to(x.dtype) * self.cross(self.norm(x), mask=mask, kv=kv)
        return x + torch.tanh(self.mlp_gate).to(x.dtype) * self.mlp(self.norm_mlp(x))


def decoder_layers(lm: nn.Module) -> nn.ModuleList:
    """The LM's list of transformer layers (GPT-2: transformer.h, Llama / Qwen2: model.layers):
    the ModuleList as long as config.num_hidden_layers."""
    n = lm.config.num_hidden_layers
    found = [m for m in lm.modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if not found:
        raise ValueError(f"{type(lm).__name__}: found no list of {n} transformer layers")
    return found[0]


class LMDecoder(nn.Module):
    """A Hugging Face causal LM (`lm`, e.g. AutoModelForCausalLM) as Mirasol's text decoder.

    Token ids >= the LM's vocabulary (`lm_vocab`) are Mirasol's own specials the LM lacks (pad,
    sep, ...): they get learned embeddings here (`extra`) and their own logit columns, so they
    train even when the LM is frozen. `cfg.vocab_size` = lm_vocab + extra tokens.
    """

    def __init__(self, cfg: MirasolConfig, lm: nn.Module):
        super().__init__()
        self.cfg, self.lm = cfg, lm
        self.lm_vocab = lm.get_input_embeddings().weight.shape[0]
        if cfg.vocab_size <= self.lm_vocab:
            raise ValueError(f"vocab_size={cfg.vocab_size} must exceed the LM's {self.lm_vocab} tokens (its extra "
                             "specials follow them); build the config with mirasol.model.pretrained.resolve_config")
        dim = lm.config.hidden_size
        self.dim = dim
        layers = decoder_layers(lm)
        every = cfg.cross_attn_every
        self.cross_after = list(range(every - 1, len(layers), every))  # after layers k-1, 2k-1, ...
        self.blocks = nn.ModuleList(
            GatedCrossBlock(dim, lm.config.num_attention_heads, cfg.av_dim, cfg.mlp_ratio, cfg.dropout)
            for _ in self.cross_after)
        self.extra = nn.Embedding(cfg.vocab_size - self.lm_vocab, dim)
        nn.init.normal_(self.extra.weight, std=float(lm.get_input_embeddings().weight.detach().std()))
        self.extra.keep_init = True  # Mirasol._init_weights leaves it at the LM's embedding scale
        # The cross-attention layers run as forward hooks of the LM's layers, so the LM keeps its
        # own module names (for LoRA targets and its weight files) and its own forward.
        self._context = None
        for j, i in enumerate(self.cross_after):
            layers[i].register_forward_hook(self._hook(j))

    def _hook(self, j: int):
        def hook(module, args, output):
            if self._context is None:  # the LM used on its own
                return output
            context_kv, mask = self._context
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = self.blocks[j](hidden, context_kv[j], mask)
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
        return hook

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        lm_part = self.lm.get_input_embeddings()(ids.clamp(max=self.lm_vocab - 1))
        extra = self.extra((ids - self.lm_vocab).clamp(min=0)).to(lm_part.dtype)
        return torch.where((ids >= self.lm_vocab)[..., None], extra, lm_part)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        lm_logits = self.lm.get_output_embeddings()(hidden)
        return torch.cat([lm_logits, hidden @ self.extra.weight.t().to(hidden.dtype)], dim=-1)

    def context_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [block.cross.project_kv(memory) for block in self.blocks]

    def new_caches(self) -> dict:
        return {}

    @staticmethod
    def reorder_caches(caches: dict, index: torch.Tensor) -> None:
        if caches.get("lm") is not None:
            caches["lm"].reorder_cache(index)

    def forward(self, input_ids, memory=None, attention_mask=None, positions=None, caches=None, context_kv=None,
                memory_mask=None, memory_index=None) -> torch.Tensor:
        """As TextDecoder.forward: hidden states [B, L, dim] (after the LM's final norm)."""
        b, length = input_ids.shape
        past = caches["lm"].get_seq_length() if caches and caches.get("lm") is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones(b, past + length, dtype=torch.bool, device=input_ids.device)
        if positions is None:  # count real tokens only: a left-padded prompt keeps its positions
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
        if context_kv is None:
            context_kv = self.context_kv(memory)
            if memory_index is not None:  # one memory per clip, shared by its rows
                context_kv = [(k[memory_index], v[memory_index]) for k, v in context_kv]
        cross_mask = None if memory_mask is None else memory_mask.bool()[:, None, None, :]
        self._context = (context_kv, cross_mask)
        try:
            out = self.lm.base_model(inputs_embeds=self.embed(input_ids), attention_mask=attention_mask.long(),
                                     position_ids=positions, past_key_values=caches.get("lm") if caches is not None
                                     else None, use_cache=caches is not None)
        finally:
            self._context = None
        if caches is not None:
            caches["lm"] = out.past_key_values
        return out.last_hidden_state


class ImageBackbone(nn.Module):
    """A pretrained image encoder on each frame of a chunk (frames folded into the batch), its patch
    tokens averaged over each tubelet's frames. [N, f, 3, S, S] in [0, 1] -> [N, f/t * P, dim].

    Frames are resized to the encoder's image size when they differ and normalised with its
    image_mean / image_std."""

    def __init__(self, cfg: MirasolConfig, encoder: nn.Module, mean, std):
        super().__init__()
        self.encoder = encoder
        vc = encoder.config
        self.size, self.t = vc.image_size, cfg.tubelet_size
        side = vc.image_size // vc.patch_size
        self.patches = side * side
        self.out_dim = vc.hidden_size
        self.grid = (cfg.frames_per_chunk // cfg.tubelet_size, side, side)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        n, f = frames.shape[:2]
        x = frames.flatten(0, 1)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        x = (x - self.mean) / self.std
        hidden = self.encoder(pixel_values=x).last_hidden_state[:, -self.patches:]  # patch tokens (no CLS)
        hidden = hidden.reshape(n, f // self.t, self.t, self.patches, -1).mean(2)
        return hidden.flatten(1, 2)


class WhisperBackbone(nn.Module):
    """The Whisper encoder on one chunk's raw log10 Whisper mel [N, n_mels, a] -> [N, a/2, dim].

    Whisper's own normalisation is applied per chunk (clamp to the chunk's max - 8, then
    (x + 4) / 4), and the encoder runs on the chunk's frames only, with positions 0..a/2-1, instead
    of a 30 s window padded with silence (what Whisper itself insists on): 100x less work for 1 s
    chunks, and each chunk stays independent."""

    def __init__(self, cfg: MirasolConfig, encoder: nn.Module):
        super().__init__()
        if cfg.audio_features != "whisper" or cfg.n_mels != encoder.config.num_mel_bins:
            raise ValueError(f"the Whisper encoder needs audio_features='whisper' and n_mels="
                             f"{encoder.config.num_mel_bins} (mirasol.model.pretrained.resolve_config sets both)")
        self.encoder = encoder
        self.out_dim = encoder.config.d_model
        frames = cfg.audio_frames_per_chunk // (encoder.conv1.stride[0] * encoder.conv2.stride[0])
        if frames > encoder.embed_positions.weight.shape[0]:
            raise ValueError(f"a chunk of {cfg.chunk_seconds:g} s is longer than the Whisper encoder's window")
        self.grid = (frames, 1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        floor = mel.amax(dim=(1, 2), keepdim=True) - 8.0
        x = (torch.maximum(mel, floor) + 4.0) / 4.0
        enc = self.encoder
        x = F.gelu(enc.conv1(x.to(enc.conv1.weight.dtype)))
        x = F.gelu(enc.conv2(x)).transpose(1, 2)
        x = x + enc.embed_positions.weight[: x.shape[1]]
        for layer in enc.layers:
            out = layer(x, None)
            x = out[0] if isinstance(out, tuple) else out
        return enc.layer_norm(x)
