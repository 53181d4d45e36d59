"""The autoregressive text decoder: pre-norm causal transformer with rotary positions, a
cross-attention sublayer in every block attending to the audio-video latents, tied embeddings.

Padding: `attention_mask` [B, L] marks real tokens. Positions count real tokens only, so a
left-padded prompt gets the same positions (and outputs) as the same prompt unpadded.
"""

from __future__ import annotations

import torch
from torch import nn

from mirasol.config import MirasolConfig
from mirasol.model.layers import Block, rope_cache


class TextDecoder(nn.Module):
    def __init__(self, cfg: MirasolConfig):
        super().__init__()
        self.cfg = cfg
        self.head_dim = cfg.text_dim // cfg.text_heads
        self.embed = nn.Embedding(cfg.vocab_size, cfg.text_dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.blocks = nn.ModuleList(
            Block(cfg.text_dim, cfg.text_heads, cfg.mlp_ratio, cfg.dropout, context_dim=cfg.av_dim,
                  gated=cfg.cross_attn_gate)
            for _ in range(cfg.text_layers)
        )
        self.norm = nn.LayerNorm(cfg.text_dim)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.embed.weight.t()  # tied input/output embeddings

    def context_kv(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Cross-attention keys/values of every block, computed once per clip for generation."""
        return [block.cross.project_kv(memory) for block in self.blocks]

    def new_caches(self) -> list[dict]:
        """Empty self-attention KV caches for generation (the decoder fills them)."""
        return [{} for _ in self.blocks]

    @staticmethod
    def reorder_caches(caches: list[dict], index: torch.Tensor) -> None:
        """Keep / repeat cache rows (beam search)."""
        for cache in caches:
            cache["k"], cache["v"] = cache["k"][index], cache["v"][index]

    def forward(
        self,
        input_ids: torch.Tensor,
        memory: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        caches: list[dict] | None = None,
        context_kv: list | None = None,
        memory_mask: torch.Tensor | None = None,
        memory_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids [B, L]; memory [B, M, av_dim] (or `context_kv`); attention_mask [B, L_total]
        covering cached tokens followed by these L. memory_index [B] (optional): memory holds one
        entry per clip and row i reads entry memory_index[i] (several questions about one clip share
        its keys/values). Returns hidden states [B, L, text_dim]."""
        b, length = input_ids.shape
        past = caches[0]["k"].shape[2] if caches and "k" in caches[0] else 0
        total = past + length
        if attention_mask is None:
            attention_mask = torch.ones(b, total, dtype=torch.bool, device=input_ids.device)
        attention_mask = attention_mask.bool()
        if positions is None:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
        rope = rope_cache(positions, self.head_dim, self.cfg.rope_theta)

        # Query i (absolute index past+i) sees real keys j <= past+i, and always itself so that
        # padding rows stay finite.
        q_idx = torch.arange(past, total, device=input_ids.device)[:, None]
        k_idx = torch.arange(total, device=input_ids.device)[None, :]
        mask = (k_idx <= q_idx)[None] & attention_mask[:, None, :]
        mask = (mask | (k_idx == q_idx)[None])[:, None]  # [B, 1, L, total]
        cross_mask = None if memory_mask is None else memory_mask.bool()[:, None, None, :]

        x = self.embed(input_ids)
        for i, block in enumerate(self.blocks):
            x = block(
                x, mask=mask, rope=rope,
                cache=caches[i] if caches is not None else None,
                context=memory, context_mask=cross_mask,
                context_kv=context_kv[i] if context_kv is not None else None, context_index=memory_index,
            )
        return self.norm(x)
