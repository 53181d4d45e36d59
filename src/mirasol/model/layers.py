"""Transformer building blocks shared by every part of the model.

Written on `F.scaled_dot_product_attention`. Masks are boolean with True = may attend, shaped to
broadcast against [B, heads, Lq, Lk]. The self-attention layer can carry a key/value cache for
generation; cross-attention keys/values can be computed once and reused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

# Initial scale of learned position, role and query embeddings. They must be comparable to the
# content they are added to (patch embeddings, LayerNorm-ed tokens: roughly unit scale per feature),
# or "where" and "which token" are invisible at the start: with the customary 0.02 the tiny model
# did not learn the direction of motion (a question about position).
EMBED_STD = 0.5


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.fc2.residual_out = True  # scaled at init (see Mirasol._init_weights)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.fc2(F.gelu(self.fc1(x))))


def rope_cache(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for rotary positions. positions: [B, L] (ints) -> each [B, 1, L, head_dim/2]."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[..., None] * inv_freq  # [B, L, head_dim/2]
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of each head by position-dependent angles. x: [B, H, L, Dh]."""
    x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.type_as(x)


class Attention(nn.Module):
    """Multi-head attention. Self-attention when `context` is None, else cross-attention."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.out.residual_out = True
        self.dropout = dropout

    def split(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, H, L, Dh]
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def project_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(context).chunk(2, dim=-1)
        return self.split(k), self.split(v)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: dict | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        context_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`cache` (self-attention only): dict whose "k"/"v" grow by this call's keys/values.
        `kv`: precomputed (k, v) for cross-attention. `context_index` [B]: row i of x attends to
        row context_index[i] of the context, whose keys/values are projected once per context row."""
        q = self.split(self.q(x))
        if kv is not None:
            k, v = kv
        else:
            k, v = self.project_kv(x if context is None else context)
            if context_index is not None:
                k, v = k[context_index], v[context_index]
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).flatten(2))


class Block(nn.Module):
    """Pre-norm transformer block: self-attention, optional cross-attention, MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 context_dim: int | None = None, gated: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout=dropout)
        self.cross = None
        if context_dim is not None:
            self.norm_cross = nn.LayerNorm(dim)
            self.cross = Attention(dim, heads, context_dim=context_dim, dropout=dropout)
            # Flamingo-style tanh gate starting closed, so a pretrained decoder is unchanged at init.
            self.gate = nn.Parameter(torch.zeros(1)) if gated else None
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio, dropout)
        self.drop = nn.Dropout(dropout)
        # Activation checkpointing (train.activation_checkpointing): keep only the block's input and
        # recompute the rest in the backward pass. Same results (the RNG is replayed), less memory.
        self.checkpoint = False

    def forward(self, x, mask=None, rope=None, cache=None, context=None, context_mask=None, context_kv=None,
                context_index=None):
        if self.checkpoint and self.training and cache is None and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, mask, rope, None, context, context_mask,
                                                     context_kv, context_index, use_reentrant=False)
        return self._forward(x, mask, rope, cache, context, context_mask, context_kv, context_index)

    def _forward(self, x, mask=None, rope=None, cache=None, context=None, context_mask=None, context_kv=None,
                 context_index=None):
        x = x + self.drop(self.attn(self.norm1(x), mask=mask, rope=rope, cache=cache))
        if self.cross is not None:
            y = self.cross(self.norm_cross(x), context=context, mask=context_mask, kv=context_kv,
                           context_index=context_index)
            x = x + self.drop(y if self.gate is None else torch.tanh(self.gate) * y)
        return x + self.mlp(self.norm2(x))


class Encoder(nn.Module):
    """A stack of non-causal blocks with a final norm (used by the media encoders and the combiner)."""

    def __init__(self, dim: int, heads: int, layers: int, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask=mask)
        return self.norm(x)
