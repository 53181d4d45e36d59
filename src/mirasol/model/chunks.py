"""Cutting a clip into time chunks: the step every other part of the model rests on."""

from __future__ import annotations

import torch

from mirasol.config import MirasolConfig


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
