"""Lazy chunk decoding: a video of any length as a generator of its time chunks.

    for chunk in iter_chunks("long.mp4", cfg):        # cfg: the model's media settings
        session.push(chunk.video[None], chunk.audio[None])

Chunk t covers seconds [start + t * chunk_seconds, start + (t + 1) * chunk_seconds) of the file.
Each is decoded on its own by `decode_media` with a one-chunk config (it seeks to the chunk and
decodes only up to its end), so memory is bounded by a few chunks whatever the file's length:
the chunk being returned, the next one (read ahead for its first audio samples) and the last few
milliseconds of the previous one. Where seeking does not work (a file without an index or with
sparse keyframes, such as a long MPEG-TS recording: decode_media's seek_fallback), decoding each
chunk from further back would cost time quadratic in the file's length, so the rest of the file
is then read forward in one pass by the live decoder (media/live.py), whose chunks are the same.

The frames are those `load_clip` samples over the whole video (frame i of chunk t shows time
t * chunk_seconds + (i + 0.5) / fps). The audio features (cfg.audio_features, as load_clip computes
them) near a chunk's edges read a few milliseconds of the neighbouring chunks, so each chunk's
spectrogram is computed from its own samples plus those of its neighbours (features.chunk_features,
which the live decoder shares): the audio matches one spectrogram of the whole file (up to
the resampler's edge effects where decoding restarts, which are small).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from mirasol.config import MirasolConfig
from mirasol.media.clip import MediaChunk
from mirasol.media.decode import DecodedMedia, MediaError, decode_media
from mirasol.media.features import chunk_features, context_samples
from mirasol.media.live import live_chunks


def iter_chunks(path: str | os.PathLike, cfg: MirasolConfig, start: float = 0.0,
                end: float | None = None, max_chunks: int | None = None) -> Iterator[MediaChunk]:
    """Yield the chunks of `path` from `start` (seconds) to `end` (default: the end of the file), as
    cfg's media settings say (cfg.num_chunks is ignored: as many chunks as the file holds). The
    last chunk is padded like `load_clip` pads (last frame held, silence) and says how much of it
    is real. Raises MediaError when the file cannot be decoded at all."""
    import torch

    one = cfg.replace(num_chunks=1, clip_window="start")
    seconds = cfg.chunk_seconds
    if start < 0 or (end is not None and end <= start):
        raise MediaError(os.fspath(path), f"invalid range start={start} end={end}")

    def decode(t: int) -> DecodedMedia | None:
        """Chunk t, or None once the file (or `end`) is over."""
        chunk_start = start + t * seconds
        if (max_chunks is not None and t >= max_chunks) or (end is not None and chunk_start >= end):
            return None
        try:
            media = decode_media(path, one, chunk_start, end)
        except MediaError:
            if t == 0:
                raise
            return None  # nothing left after the previous chunk
        if t > 0 and max(media.video_seconds, media.audio_seconds) <= 0.5 / cfg.fps + 1e-9:
            # real content ends before the chunk's first frame time: codec padding of the previous
            # chunk's end, not a chunk (the rule of load_clip's count_valid_chunks)
            return None
        return media

    skip = round(start / seconds)  # chunks of the file before `start`, when it is on a chunk edge
    forward_ok = end is None and abs(start - skip * seconds) < 1e-9
    side = context_samples(cfg)  # audio context on each side
    previous_tail = np.zeros(side, dtype=np.float32)  # silence before the first chunk, as in load_clip
    current, t = decode(0), 0
    while current is not None:
        following = decode(t + 1)
        if forward_ok and following is not None and following.seek_fallback:
            # Seeking does not work in this file (no index, sparse keyframes): every later chunk would
            # be decoded from further back, at last from the start (quadratic in the file's length).
            yield from _read_forward(path, cfg, skip, t, max_chunks, current.duration)
            return
        head = following.waveform[:side] if following is not None else np.zeros(side, dtype=np.float32)
        wave = np.concatenate([previous_tail, current.waveform, head])
        audio = chunk_features(wave, cfg)
        video = torch.from_numpy(current.frames).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
        valid = min(seconds, max(current.video_seconds, current.audio_seconds))
        yield MediaChunk(index=t, start=current.window_start, video=video, audio=audio,
                         valid_seconds=valid, has_audio=current.has_audio, duration=current.duration)
        previous_tail = current.waveform[-side:]
        current, t = following, t + 1


def _read_forward(path, cfg: MirasolConfig, skip: int, first: int, max_chunks: int | None,
                  duration: float | None) -> Iterator[MediaChunk]:
    """Chunks `first`, `first` + 1, ... (counted from chunk `skip` of the file) read front to back in
    one pass by the live decoder, whose chunks equal these (media/live.py)."""
    try:
        for live in live_chunks(os.fspath(path), cfg, follow=False, silent_ok=True):
            t = live.chunk.index - skip
            if max_chunks is not None and t >= max_chunks:
                return
            if t >= first:
                yield replace(live.chunk, index=t, duration=duration)
    except MediaError:
        return  # as chunk by chunk: the chunks end where the file cannot be decoded any further
