"""The audio-video autoregressive model: a transformer over the T x m chunk tokens in which a
token sees every token of its own chunk and of earlier chunks (block-causal), plus the latent
prediction loss (chunk t predicts chunk t+1's combiner features) and random masking of the
combiner outputs during training. With `chunk_delta`, chunk t's input also carries an MLP of
z_t - z_(t-1) (zero for the first chunk), so the stream needs only the previous chunk's z."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mirasol.config import MirasolConfig
from mirasol.model.layers import EMBED_STD, Block


def block_causal_mask(num_chunks: int, tokens_per_chunk: int, device=None, window: int | None = None) -> torch.Tensor:
    """[T*m, T*m] bool, True where query token i may attend to key token j (chunk(j) <= chunk(i)).
    With `window` W, only the last W chunks: chunk(i) - W < chunk(j) <= chunk(i)."""
    chunk = torch.arange(num_chunks * tokens_per_chunk, device=device) // tokens_per_chunk
    mask = chunk[:, None] >= chunk[None, :]
    if window is not None:
        mask &= chunk[:, None] - chunk[None, :] < window
    return mask


def check_window(window: int | None) -> int | None:
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"max_context_chunks must be a positive whole number of chunks or None, got {window!r}")
    return window


def sinusoidal(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed sinusoidal embedding of integer positions: any number of chunks works."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions.device, dtype=torch.float32) / half)
    angles = positions.float()[:, None] * freq
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class AVModel(nn.Module):
    def __init__(self, cfg: MirasolConfig):
        super().__init__()
        d, self.m = cfg.av_dim, cfg.combiner_tokens
        self.mask_ratio = cfg.mask_ratio
        self.latent_loss_kind = cfg.latent_loss
        self.token_pos = nn.Parameter(torch.randn(self.m, d) * EMBED_STD)  # position within the chunk
        self.mask_token = nn.Parameter(torch.zeros(d))
        self.delta = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d)) if cfg.chunk_delta else None
        self.blocks = nn.ModuleList(Block(d, cfg.av_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.av_layers))
        self.norm = nn.LayerNorm(d)
        self.predictor = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))

    def add_delta(self, z: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        """z [B, T, m, D] (+ MLP of each chunk's difference from the one before; `previous` [B, m, D]
        is the chunk before z's first, None at the start of a video)."""
        if self.delta is None:
            return z
        before = torch.cat([z[:, :1] if previous is None else previous[:, None], z[:, :-1]], dim=1)
        return z + self.delta(z - before)

    def embed(self, z: torch.Tensor, first_chunk: int = 0) -> torch.Tensor:
        """Add chunk-index (sinusoidal, from `first_chunk` on) and within-chunk positions."""
        t, d = z.shape[1], z.shape[-1]
        chunk_pos = sinusoidal(torch.arange(first_chunk, first_chunk + t, device=z.device), d)
        return z + chunk_pos[:, None].to(z.dtype) + self.token_pos

    def forward(self, z: torch.Tensor, window: int | None = None) -> torch.Tensor:
        """z: combiner outputs [B, T, m, D] -> latents h [B, T, m, D]. `window` W: each chunk
        attends only to the last W chunks (itself included), as a stream with that window does."""
        b, t, m, d = z.shape
        x = z
        if self.training and self.mask_ratio > 0:
            drop = torch.rand(b, t, m, 1, device=z.device) < self.mask_ratio
            x = torch.where(drop, self.mask_token.to(x.dtype), x)
        x = self.embed(self.add_delta(x)).reshape(b, t * m, d)
        mask = block_causal_mask(t, m, z.device, check_window(window))
        for block in self.blocks:
            x = block(x, mask=mask)
        return self.norm(x).reshape(b, t, m, d)

    def step(self, z: torch.Tensor, index: int, caches: list[dict], window: int | None = None,
             previous: torch.Tensor | None = None) -> torch.Tensor:
        """One chunk of a stream: z [B, m, D] is chunk number `index`; `caches` (one dict per
        block) hold the keys/values of earlier chunks and grow by this one. -> latents [B, m, D].
        Its tokens see all cached chunks and each other, which is exactly the block-causal mask.
        With `window` W the caches are trimmed to the last W - 1 chunks afterwards, so memory stays
        bounded; the next chunk then sees the same keys as under the windowed mask of `forward`.
        `previous`: the combiner output of chunk index - 1 (used with chunk_delta)."""
        x = self.embed(self.add_delta(z[:, None], previous), first_chunk=index)[:, 0]
        for block, cache in zip(self.blocks, caches):
            x = block(x, cache=cache)
            if window is not None:
                start = max(cache["k"].shape[2] - (window - 1) * self.m, 0)
                cache["k"], cache["v"] = cache["k"][:, :, start:], cache["v"][:, :, start:]
        return self.norm(x)

    def latent_loss(self, h: torch.Tensor, z: torch.Tensor, chunk_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predict chunk t+1's combiner features from the latents of chunk t (target detached).
        chunk_mask [B, T]: targets in chunks that are only padding are not scored."""
        if h.shape[1] < 2:
            return h.new_zeros(())
        pred = self.predictor(h[:, :-1]).float()
        target = z[:, 1:].detach().float()
        if self.latent_loss_kind == "cosine":
            err = 1.0 - F.cosine_similarity(pred, target, dim=-1)  # [B, T-1, m]
        else:
            err = (pred - target).pow(2).mean(-1)
        if chunk_mask is None:
            return err.mean()
        weight = chunk_mask[:, 1:, None].to(err.dtype).expand_as(err)
        return (err * weight).sum() / weight.sum().clamp(min=1)
