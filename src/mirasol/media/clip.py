"""load_clip: one video file -> time-aligned video frames and log-mel audio for the model.

    clip = load_clip("a.mp4", cfg, start=4.0)
    clip.video  # [cfg.num_frames, 3, S, S] float32 in [0, 1]
    clip.audio  # [cfg.n_mels, cfg.audio_frames] float32 normalised log-mel

The model cuts chunk t as video frames [t*f, (t+1)*f) and audio frames [t*a, (t+1)*a), with
f = cfg.frames_per_chunk and a = cfg.audio_frames_per_chunk. Both ranges cover the same seconds,
[ws + t*chunk_seconds, ws + (t+1)*chunk_seconds), because video frame i shows time
ws + (i + 0.5) / fps (decode.py) and audio frame j is centred on time ws + j * hop (features.py).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mirasol.config import MirasolConfig
from mirasol.media.decode import MediaError, NoAudioError, decode_media  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    import torch


@dataclass
class Clip:
    video: "torch.Tensor"  # [num_frames, 3, S, S] float32 in [0, 1]
    audio: "torch.Tensor"  # [n_mels, audio_frames] float32 log-mel (features.SILENCE where silent)
    has_audio: bool  # the file has an audio stream (False: `audio` is all silence)
    valid_seconds: float  # real content from the window start; after it video repeats, audio is silent
    valid_chunks: int  # chunks with real content (see count_valid_chunks); the rest are padding
    path: str
    start: float  # window start in the file, seconds
    end: float  # end of the part of the file the chunks cover (start + clip_seconds unless 'uniform')
    duration: float | None  # of the file, None when the container does not record it
    source_fps: float | None  # the file's average frame rate
    video_seconds: float  # real video from the window start
    audio_seconds: float  # real audio from the window start (0 without audio)


@dataclass
class MediaChunk:
    """One time chunk of a file, as a stream feeds it (chunk_reader.iter_chunks, live.live_chunks)."""

    index: int  # t: the chunk's place in the stream
    start: float  # seconds from the start of the file
    video: "torch.Tensor"  # [frames_per_chunk, 3, S, S] float32 in [0, 1]
    audio: "torch.Tensor"  # [n_mels, audio_frames_per_chunk] features (cfg.audio_features)
    valid_seconds: float  # real content from `start` (less than chunk_seconds only in the last chunk)
    has_audio: bool
    duration: float | None  # of the file, when the container records it

    @property
    def end(self) -> float:
        return self.start + self.valid_seconds


def count_valid_chunks(valid_seconds: float, cfg: MirasolConfig) -> int:
    """Chunks that hold real content: a chunk counts when the real content reaches its first video
    sample time (half a frame slot into it), so the few milliseconds of padding that codecs add at
    the end of a stream do not make a chunk. The first chunk counts whenever anything is real."""
    if valid_seconds <= 0:
        return 0
    reached = math.ceil((valid_seconds - 0.5 / cfg.fps) / cfg.chunk_seconds - 1e-9)
    return min(cfg.num_chunks, max(1, reached))


def load_clip(path: str | os.PathLike | bytes, cfg: MirasolConfig, start: float | None = None,
              end: float | None = None, name: str | None = None) -> Clip:
    """Decode the clip of `path` in [start, end] (seconds, optional) as cfg says. `path` may be the
    file's bytes instead (a shard's video), with `name` for messages and `Clip.path`.

    Raises MediaError (NoAudioError when the file has no audio and cfg.missing_audio is 'skip' or
    'error'). Window choice, padding and timing conventions: see mirasol.media.decode."""
    import torch  # here, so that `import mirasol.media` stays fast

    from mirasol.media.features import audio_features

    media = decode_media(path, cfg, start, end, name=name)
    video = torch.from_numpy(media.frames).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
    if media.spans is None:
        audio = audio_features(media.waveform, cfg, num_frames=cfg.audio_frames)
    else:  # 'uniform': each chunk's audio is a separate piece; no STFT window may straddle two of them
        pieces = audio_features(media.waveform.reshape(cfg.num_chunks, -1), cfg, num_frames=cfg.audio_frames_per_chunk)
        audio = pieces.permute(1, 0, 2).reshape(cfg.n_mels, cfg.audio_frames)
    valid_seconds = min(cfg.clip_seconds, max(media.video_seconds, media.audio_seconds))
    return Clip(video=video, audio=audio, has_audio=media.has_audio, valid_seconds=valid_seconds,
                valid_chunks=count_valid_chunks(valid_seconds, cfg),
                path=(name or "<bytes>") if isinstance(path, (bytes, bytearray, memoryview)) else os.fspath(path),
                start=media.window_start, end=media.window_end, duration=media.duration, source_fps=media.source_fps,
                video_seconds=media.video_seconds, audio_seconds=media.audio_seconds)
