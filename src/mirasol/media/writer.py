"""Write small mp4 files (H.264 or MPEG-4 video + AAC audio) from numpy arrays.

Used by the media tests and by the synthetic-dataset generator, so the output is an ordinary file
that goes through exactly the same decoding path as a user's video.

    write_video(path, frames, fps, audio=None, sample_rate=16000)

- `frames`: uint8 RGB, either an array [N, H, W, 3] or any iterable of [H, W, 3] arrays (a generator
  keeps memory flat for long files). H and W must be even (yuv420p stores chroma at half size).
- `fps`: frame rate (float or Fraction; 29.97 is written as 30000/1001). Frame k is shown at k / fps.
- `frame_times`: optional presentation time in seconds of every frame, for variable frame rate
  files; when given, `fps` is only the nominal rate written in the header.
- `audio`: optional float32 in [-1, 1], mono [samples] or [channels, samples], at `sample_rate`;
  sample k plays at k / sample_rate. Written as AAC (the decoder removes the encoder delay, so the
  timing survives the round trip to within a sample); the tail is padded with silence to a whole
  1024-sample AAC block.

The output is deterministic (single-threaded encoding: the same arguments give the same bytes) and
appears atomically (written to `<path>.part`, then renamed), so an interrupted run never leaves a
half-written file that looks complete.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from fractions import Fraction

import av
import numpy as np

# AAC encodes fixed blocks of 1024 samples.
_AAC_FRAME = 1024
# Fine time base for variable-frame-rate pts: whole milliseconds are exact, and MPEG-4 Part 2
# accepts it (its time base denominator must stay below 2^16).
_VFR_TIME_BASE = Fraction(1, 60000)


def video_codec() -> str:
    """The codec write_video uses: libx264 when PyAV's FFmpeg has it, else the built-in mpeg4."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _as_rate(fps: float | Fraction) -> Fraction:
    if isinstance(fps, float) and not fps.is_integer() and abs(fps * 1.001 - round(fps * 1.001)) < 1e-3:
        return Fraction(round(fps * 1.001) * 1000, 1001)  # NTSC rates: 23.976, 29.97, 59.94
    rate = Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    return rate


def write_video(path: str | os.PathLike, frames: np.ndarray | Iterable[np.ndarray], fps: float | Fraction,
                audio: np.ndarray | None = None, sample_rate: int = 16000, *,
                frame_times: Sequence[float] | None = None, crf: int = 18, codec: str | None = None,
                gop: int | None = None) -> None:
    """Write `frames` (and `audio`, if given) to an mp4 file at `path`. See the module docstring.

    `crf`: libx264 quality (lower is better, 0 lossless). `codec`: 'libx264' or 'mpeg4' (default:
    video_codec()). `gop`: at most this many frames between keyframes (default: the codec's)."""
    rate = _as_rate(fps)
    codec = codec or video_codec()
    path = os.fspath(path)
    partial = path + ".part"
    try:
        _write(partial, frames, rate, audio, sample_rate, frame_times, crf, codec, gop)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _write(path: str, frames, rate: Fraction, audio, sample_rate: int, frame_times, crf: int, codec: str,
           gop: int | None) -> None:
    with av.open(path, "w", format="mp4") as container:
        video = None  # created on the first frame, once the size is known
        audio_blocks = None
        for k, image in enumerate(frames):
            image = np.ascontiguousarray(image, dtype=np.uint8)
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"frame {k}: expected [H, W, 3] uint8 RGB, got shape {image.shape}")
            if video is None:
                video = _add_video_stream(container, codec, rate, image.shape[1], image.shape[0], crf,
                                          variable=frame_times is not None)
                if gop is not None:
                    video.codec_context.gop_size = gop
                if audio is not None:  # both streams must exist before the first packet is written
                    audio_blocks = _AudioBlocks(container, audio, sample_rate)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if frame_times is None:
                frame.pts, frame.time_base = k, 1 / rate
            else:
                frame.pts, frame.time_base = round(frame_times[k] / _VFR_TIME_BASE), _VFR_TIME_BASE
            if audio_blocks is not None:  # keep the file interleaved: audio up to this frame's time first
                audio_blocks.write_until(float(frame.pts * frame.time_base))
            container.mux(video.encode(frame))
        if video is None:
            raise ValueError("no frames to write")
        container.mux(video.encode(None))
        if audio_blocks is not None:
            audio_blocks.write_until(float("inf"))


def _add_video_stream(container, codec: str, rate: Fraction, width: int, height: int, crf: int,
                      variable: bool):
    if width % 2 or height % 2:
        raise ValueError(f"frame size {width}x{height}: width and height must be even for yuv420p")
    stream = container.add_stream(codec, rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.codec_context.thread_count = 1  # threaded encoders may give different bytes run to run
    if variable:
        stream.codec_context.time_base = _VFR_TIME_BASE
    if codec == "libx264":
        # No B-frames (with them x264 invents decode times that spoil a VFR file's frame durations)
        # and no macroblock-tree rate control or lookahead: those make x264's bytes differ run to run.
        stream.codec_context.options = {"preset": "veryfast", "crf": str(crf), "threads": "1", "bf": "0",
                                        "x264-params": "bframes=0:mbtree=0:rc-lookahead=0:sync-lookahead=0"}
    else:
        stream.codec_context.qscale = 2  # near-lossless for mpeg4, keeps flashes and levels recognisable
    return stream


def _mono_or_channels(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[None, :]
    if audio.ndim != 2 or audio.shape[0] not in (1, 2):
        raise ValueError(f"audio must be [samples] or [channels (1 or 2), samples], got shape {audio.shape}")
    return np.ascontiguousarray(audio)


class _AudioBlocks:
    """Encodes the audio in 1024-sample AAC blocks, on demand up to a given time."""

    def __init__(self, container, audio: np.ndarray, sample_rate: int):
        self.audio = _mono_or_channels(audio)
        self.layout = "mono" if self.audio.shape[0] == 1 else "stereo"
        self.rate = int(sample_rate)
        self.container = container
        self.stream = container.add_stream("aac", rate=self.rate)
        self.stream.layout = self.layout
        self.stream.codec_context.bit_rate = 128_000
        # FFmpeg's "fast" AAC coder: its default (twoloop) dominates the built-in world's synthesis
        # time, and the coder barely moves the log-mel features the model sees.
        self.stream.codec_context.options = {"aac_coder": "fast"}
        self.next = 0  # first sample not yet encoded

    def write_until(self, seconds: float) -> None:
        total = self.audio.shape[1]
        while self.next < total and self.next / self.rate <= seconds:
            block = self.audio[:, self.next:self.next + _AAC_FRAME]
            if block.shape[1] < _AAC_FRAME:  # the encoder wants full blocks: pad the tail with silence
                block = np.pad(block, ((0, 0), (0, _AAC_FRAME - block.shape[1])))
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(block), format="fltp", layout=self.layout)
            frame.sample_rate, frame.pts, frame.time_base = self.rate, self.next, Fraction(1, self.rate)
            self.container.mux(self.stream.encode(frame))
            self.next += _AAC_FRAME
        if self.next >= total and seconds == float("inf"):
            self.container.mux(self.stream.encode(None))
