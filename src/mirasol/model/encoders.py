"""Per-chunk media encoders. Each receives one time chunk (chunks folded into the batch), so the
cost grows linearly with the number of chunks and no chunk can see another."""

from __future__ import annotations

import torch
from torch import nn

from mirasol.config import MirasolConfig
from mirasol.model.layers import EMBED_STD, Encoder


class VideoEncoder(nn.Module):
    """Tubelet patches (tubelet_size frames x patch_size^2 pixels) + learned positions within the
    chunk + transformer layers. [N, f, 3, S, S] in [0, 1] -> [N, tokens, video_dim]."""

    def __init__(self, cfg: MirasolConfig):
        super().__init__()
        self.t, self.p = cfg.tubelet_size, cfg.patch_size
        self.out_dim = cfg.video_dim
        side = cfg.image_size // cfg.patch_size
        self.grid = (cfg.frames_per_chunk // cfg.tubelet_size, side, side)  # token layout, for the combiner
        self.embed = nn.Linear(self.t * 3 * self.p * self.p, cfg.video_dim)
        self.embed.unit_scale = True  # see Mirasol._init_weights
        self.pos = nn.Parameter(torch.randn(cfg.video_tokens_per_chunk, cfg.video_dim) * EMBED_STD)
        self.encoder = Encoder(cfg.video_dim, cfg.video_heads, cfg.video_layers, cfg.mlp_ratio, cfg.dropout)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        n, f, c, h, w = x.shape
        t, p = self.t, self.p
        x = x.reshape(n, f // t, t, c, h // p, p, w // p, p)
        # token order: time, row, column; features: (frame in tubelet, channel, y, x)
        x = x.permute(0, 1, 4, 6, 2, 3, 5, 7)
        return x.reshape(n, (f // t) * (h // p) * (w // p), t * c * p * p)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.embed(self.patchify((frames - 0.5) * 4.0)) + self.pos
        return self.encoder(x)


class AudioEncoder(nn.Module):
    """Log-mel patches (audio_patch_mels x audio_patch_frames) + learned positions within the chunk
    + transformer layers. [N, n_mels, a] -> [N, tokens, audio_dim]."""

    def __init__(self, cfg: MirasolConfig):
        super().__init__()
        self.pm, self.pf = cfg.audio_patch_mels, cfg.audio_patch_frames
        self.out_dim = cfg.audio_dim
        self.grid = (cfg.audio_frames_per_chunk // self.pf, cfg.n_mels // self.pm)  # (time, bands)
        self.embed = nn.Linear(self.pm * self.pf, cfg.audio_dim)
        self.embed.unit_scale = True
        self.pos = nn.Parameter(torch.randn(cfg.audio_tokens_per_chunk, cfg.audio_dim) * EMBED_STD)
        self.encoder = Encoder(cfg.audio_dim, cfg.audio_heads, cfg.audio_layers, cfg.mlp_ratio, cfg.dropout)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        n, mels, a = x.shape
        x = x.reshape(n, mels // self.pm, self.pm, a // self.pf, self.pf)
        x = x.permute(0, 3, 1, 2, 4)  # token order: time, frequency band
        return x.reshape(n, (a // self.pf) * (mels // self.pm), self.pm * self.pf)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embed(self.patchify(mel)) + self.pos)
