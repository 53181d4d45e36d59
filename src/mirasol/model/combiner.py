"""Combiners: fuse one chunk's video and audio tokens into m tokens.

Both take `tokens` [B, T, N, D] (a chunk's video and audio tokens, already projected to D and
tagged with modality embeddings) and return [B, T, m, D].
- TransformerCombiner looks at one chunk at a time (chunks folded into the batch).
- TTMCombiner (Token Turing Machine) carries a memory of k tokens from chunk to chunk; it reads
  from [memory; chunk] into r tokens, processes them, writes [memory; chunk; processed] back into
  k memory tokens and emits m tokens. Chunk t only ever sees memory written by chunks < t.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mirasol.config import MirasolConfig
from mirasol.model.layers import EMBED_STD, Encoder


def _grid(n: int) -> tuple[int, int]:
    """The most square (rows, cols) with rows * cols == n."""
    rows = max(r for r in range(1, int(math.isqrt(n)) + 1) if n % r == 0)
    return rows, n // rows


class TransformerCombiner(nn.Module):
    """[video; audio] tokens of one chunk + m output tokens -> L layers -> the m outputs.

    The output tokens start from coarse summaries of the chunk (plus a learned offset each): half
    are the means of the video tokens over spatial regions, half the means of the audio tokens over
    time segments. So from the first step they carry where things are and when sounds happen, and
    neither modality can drown the other in one shared average; the layers then refine them.
    """

    def __init__(self, cfg: MirasolConfig, video_grid: tuple | None = None, audio_grid: tuple | None = None):
        super().__init__()
        self.m = cfg.combiner_tokens
        # Token layouts: video (tubelets, rows, columns), audio (time, bands). Pretrained encoders
        # bring their own (model/backbones.py).
        self.video_grid = video_grid or (cfg.frames_per_chunk // cfg.tubelet_size, cfg.image_size // cfg.patch_size,
                                         cfg.image_size // cfg.patch_size)
        self.audio_grid = audio_grid or (cfg.audio_frames_per_chunk // cfg.audio_patch_frames,
                                         cfg.n_mels // cfg.audio_patch_mels)
        self.num_audio_out = self.m // 2
        self.video_regions = _grid(self.m - self.num_audio_out)
        self.queries = nn.Parameter(torch.randn(self.m, cfg.av_dim) * EMBED_STD)
        self.encoder = Encoder(cfg.av_dim, cfg.av_heads, cfg.combiner_layers, cfg.mlp_ratio, cfg.dropout)

    def summaries(self, x: torch.Tensor) -> torch.Tensor:
        """[N, video + audio tokens, D] -> [N, m, D] region / segment means."""
        n, _, d = x.shape
        t, h, w = self.video_grid
        video = x[:, : t * h * w].reshape(n, t, h, w, d).mean(1).permute(0, 3, 1, 2)  # [N, D, h, w]
        video = F.adaptive_avg_pool2d(video, self.video_regions).flatten(2).transpose(1, 2)
        frames, bands = self.audio_grid
        audio = x[:, t * h * w:].reshape(n, frames, bands, d).mean(2).transpose(1, 2)  # [N, D, frames]
        audio = F.adaptive_avg_pool1d(audio, self.num_audio_out).transpose(1, 2)
        return torch.cat([video, audio], dim=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, t, n, d = tokens.shape
        x = tokens.reshape(b * t, n, d)
        x = torch.cat([x, self.queries + self.summaries(x)], dim=1)
        return self.encoder(x)[:, n:].reshape(b, t, self.m, d)

    # Streaming interface shared with TTMCombiner: this combiner carries no state between chunks.
    def init_state(self, batch: int) -> None:
        return None

    def step(self, chunk: torch.Tensor, state: None) -> tuple[torch.Tensor, None]:
        """One chunk's tokens [B, N, D] -> ([B, m, D], state)."""
        return self.forward(chunk[:, None])[:, 0], state


class TokenLearner(nn.Module):
    """Summarise N tokens into S: S attention maps over the N inputs, each a weighted average."""

    def __init__(self, dim: int, num_out: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.score = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, num_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, D] -> [B, S, D]
        weights = self.score(self.norm(x)).softmax(dim=1)  # normalised over the N inputs
        return torch.einsum("bns,bnd->bsd", weights, x)


class TTMCombiner(nn.Module):
    def __init__(self, cfg: MirasolConfig):
        super().__init__()
        d = cfg.av_dim
        self.memory_init = nn.Parameter(torch.randn(cfg.ttm_memory_tokens, d) * EMBED_STD)
        # Role embeddings tell the summarisers which tokens are memory, input or processed output.
        self.role = nn.Parameter(torch.randn(3, d) * EMBED_STD)
        self.read = TokenLearner(d, cfg.ttm_read_tokens)
        self.process = Encoder(d, cfg.av_heads, cfg.combiner_layers, cfg.mlp_ratio, cfg.dropout)
        self.write = TokenLearner(d, cfg.ttm_memory_tokens)
        self.emit = TokenLearner(d, cfg.combiner_tokens) if cfg.ttm_read_tokens != cfg.combiner_tokens else None

    def init_state(self, batch: int) -> torch.Tensor:
        """The memory before the first chunk: [B, k, D]."""
        return self.memory_init.expand(batch, -1, -1)

    def step(self, chunk: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One chunk's tokens [B, N, D] and the memory so far -> (outputs [B, m, D], new memory).
        `forward` runs this over the chunks in order; a stream calls it as chunks arrive."""
        mem_role, in_role, out_role = self.role
        chunk = chunk + in_role
        processed = self.process(self.read(torch.cat([memory + mem_role, chunk], dim=1)))
        out = processed if self.emit is None else self.emit(processed)
        memory = self.write(torch.cat([memory + mem_role, chunk, processed + out_role], dim=1))
        return out, memory

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        memory = self.init_state(tokens.shape[0])
        outputs = []
        for i in range(tokens.shape[1]):
            out, memory = self.step(tokens[:, i], memory)
            outputs.append(out)
        return torch.stack(outputs, dim=1)


def build_combiner(cfg: MirasolConfig, video_grid: tuple | None = None, audio_grid: tuple | None = None) -> nn.Module:
    return TTMCombiner(cfg) if cfg.combiner == "ttm" else TransformerCombiner(cfg, video_grid, audio_grid)
