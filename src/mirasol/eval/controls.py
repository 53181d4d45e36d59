"""Test-time controls: what a trained model answers when part of its input is taken away.

    none        the media as decoded
    zero_audio  every audio feature set to the value of silence (media.features.silence_value: log-mel's
                or Whisper's, as the model's audio_features)
    zero_video  every frame black (0)
    zero_media  both: the decoder's guess from the question alone
    shuffle     the time chunks put in a random order (the same order for video and audio, so each
                chunk keeps its own sound): what is left when temporal order is destroyed

`perturb_media` works on whole clips (video [B, F, 3, S, S], audio [B, n_mels, A]) and on the list
of chunks a stream is fed (`perturb_chunks`). The shuffle draws one permutation per clip from
`generator`, so a report is reproducible.
"""

from __future__ import annotations

import torch

from mirasol.choices import MEDIA_CONTROLS
from mirasol.config import MirasolConfig
from mirasol.media.features import silence_value
from mirasol.model.chunks import split_chunks


def check_control(kind: str | None) -> str:
    kind = kind or "none"
    if kind not in MEDIA_CONTROLS:
        raise ValueError(f"media control must be one of {MEDIA_CONTROLS}, got {kind!r}")
    return kind


def perturb_media(video: torch.Tensor, audio: torch.Tensor, chunk_mask: torch.Tensor | None, cfg: MirasolConfig,
                  kind: str | None, generator: torch.Generator | None = None):
    """-> (video, audio, chunk_mask) with the control `kind` applied (new tensors; inputs untouched)."""
    kind = check_control(kind)
    if kind in ("zero_audio", "zero_media"):
        audio = torch.full_like(audio, silence_value(cfg))
    if kind in ("zero_video", "zero_media"):
        video = torch.zeros_like(video)
    if kind == "shuffle":
        v, a = split_chunks(video, audio, cfg)  # [B, T, f, ...], [B, T, n_mels, a]
        b, t = v.shape[:2]
        perm = torch.stack([torch.randperm(t, generator=generator) for _ in range(b)]).to(video.device)
        rows = torch.arange(b, device=video.device)[:, None]
        v, a = v[rows, perm], a[rows, perm]
        video = v.reshape(video.shape)
        audio = a.permute(0, 2, 1, 3).reshape(audio.shape)
        if chunk_mask is not None:
            chunk_mask = chunk_mask[rows, perm]
    return video, audio, chunk_mask


def perturb_chunks(chunks: list[tuple[torch.Tensor, torch.Tensor]], kind: str | None, cfg: MirasolConfig,
                   generator: torch.Generator | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same controls on a stream's chunks [(video [f, 3, S, S], audio [n_mels, a])]."""
    kind = check_control(kind)
    out = []
    for video, audio in chunks:
        if kind in ("zero_audio", "zero_media"):
            audio = torch.full_like(audio, silence_value(cfg))
        if kind in ("zero_video", "zero_media"):
            video = torch.zeros_like(video)
        out.append((video, audio))
    if kind == "shuffle":
        out = [out[i] for i in torch.randperm(len(out), generator=generator).tolist()]
    return out
