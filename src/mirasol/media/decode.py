"""Decode one time window of a video file: frames sampled by timestamp, and mono audio.

Conventions (the model's chunking relies on them):

- Time is in seconds from the start of the file (the container's start time, so that a stream
  that begins late keeps its offset and audio stays in sync with video).
- The window starts at `ws` (see `plan_window`) and lasts cfg.clip_seconds.
- Video frame i shows the picture on screen at time ws + (i + 0.5) / cfg.fps, the middle of its
  1/fps slot: the latest decoded frame whose pts <= that time (a frame stays on screen until the
  next one, so variable frame rates need nothing special). A sample time before the first frame
  takes the first frame. Times are read from pts * time_base, never from frame counts.
- Audio sample k is at time ws + k / cfg.sample_rate (mono: the resampler down-mixes).
- Shorter than the clip (end of file, or a user `end`): video repeats the last real frame,
  audio is zeros. `video_seconds` / `audio_seconds` say how much of the window is real.
- Longer than the clip: cfg.clip_window picks the first clip_seconds ('start') or the middle
  ('center'), or spreads the chunks over all of it ('uniform'): the part of the file to use
  ([start, end], or the whole file) is cut into T equal spans of L seconds; chunk t's f frames are
  sampled evenly inside span t (frame j at s_t + (j + 0.5) * L / f) and its audio is the
  chunk_seconds in the middle of span t, so video and audio of chunk t come from the same
  seconds. When L <= chunk_seconds (the part is not longer than one clip) 'uniform' is 'start'.
  'center' and 'uniform' need the duration; a container without one falls back to 'start'.

Errors: every failure raises MediaError("<path>: <reason>"): missing, empty, unreadable or
non-media file, no video stream, corrupt data, a window outside the file, or a truncated file
(the video stops more than TRUNCATION_S before the end its stream header declares, inside the
requested window; a window before the damage still decodes). A file without an audio stream is
not a failure when cfg.missing_audio == 'zeros' (silent audio, has_audio=False); for 'skip' and
'error' it raises NoAudioError, a MediaError subclass, and the caller applies the policy: the cache
builder skips and counts the file for 'skip' and stops for 'error'. Decoding always ends: reading
stops READ_AHEAD_S past the window or at the end of the file.

Cost and memory: the decoder seeks to the keyframe before the window (never decodes the file from
its start for a late window, unless the seek finds no frame at or before it: a stream without an
index or with sparse keyframes, such as MPEG-TS, is then sought again further back (SEEK_BACKOFF_S)
and at last decoded from its start, discarding frames until the window; DecodedMedia.seek_fallback
says so), frames are streamed and only the sampled ones are converted (by
FFmpeg, straight to the target size) and kept, and audio outside the window is dropped as it is
decoded; memory does not grow with the file's length or resolution beyond one decoded frame.
'uniform' seeks again whenever the next sample time lies more than a keyframe interval ahead
(learned from the keyframes it decodes), so a long file is mostly skipped, not decoded.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass

import av
import numpy as np

from mirasol.config import MirasolConfig
from mirasol.errors import MirasolError

# Seek this much before the window start, so that the audio packets (which the demuxer positions
# near, not necessarily before, the video keyframe) cover the start of the window too.
SEEK_MARGIN_S = 0.5
# Seeks further back (seconds before the window) when a seek finds no frame at or before the window
# (no index, or the keyframe is further back), before decoding from the start of the file.
SEEK_BACKOFF_S = (2.0, 8.0, 30.0)
# Stop reading once a packet is this far past the window end; streams are interleaved far closer
# than this, so anything still missing (e.g. audio that ended early) will not come.
READ_AHEAD_S = 5.0
# Audio frames whose timestamps are within this of the running position are treated as contiguous
# (absorbs rounding in resampled timestamps); larger jumps are real gaps or overlaps.
_AUDIO_JITTER_S = 0.002
# Video that stops this much before the end its stream header declares is a truncated file.
TRUNCATION_S = 0.5
# 'uniform': seek to the next sample time only when it lies further ahead than this and than the
# longest keyframe interval seen so far (a shorter jump would land on a keyframe already passed).
MIN_SEEK_GAP_S = 1.0


class MediaError(MirasolError):
    """A media file cannot be used. The message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str | None = None):
        if reason is None:  # rebuilt from its message alone (e.g. re-raised from a DataLoader worker)
            self.path, self.reason = None, str(path)
            super().__init__(str(path))
        else:
            self.path, self.reason = os.fspath(path), reason
            super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # pickle with both fields, so it crosses process boundaries intact
        return (type(self), (self.path, self.reason) if self.path is not None else (self.reason,))


class NoAudioError(MediaError):
    """The file has no audio stream and cfg.missing_audio is 'skip' or 'error' (the caller decides)."""


@dataclass
class DecodedMedia:
    frames: np.ndarray  # [cfg.num_frames, S, S, 3] uint8 RGB
    waveform: np.ndarray  # [round(clip_seconds * sample_rate)] float32 mono in about [-1, 1]
    has_audio: bool  # the file has an audio stream
    window_start: float  # ws, seconds from the start of the file
    window_end: float  # end of the part of the file the clip covers (ws + clip_seconds unless 'uniform')
    video_seconds: float  # real video in the window, from ws (the rest repeats the last frame)
    audio_seconds: float  # real audio in the window, from ws (the rest is zeros)
    duration: float | None  # of the file, None when the container does not say
    source_fps: float | None  # the video stream's average frame rate, when known
    width: int  # decoded frame size, before resizing
    height: int
    # 'uniform' over a long part: the T spans [s_t, e_t) the chunks come from; the waveform is then
    # T separate chunk_seconds pieces (one from the middle of each span), not one stretch of sound.
    spans: list[tuple[float, float]] | None = None
    # The first seek found no frame at or before the window: decoded from further back or the start.
    seek_fallback: bool = False


def plan_window(cfg: MirasolConfig, duration: float | None, start: float | None = None,
                end: float | None = None) -> tuple[float, float]:
    """(ws, content_end): the clip covers [ws, ws + clip_seconds); nothing after content_end is used.

    `duration` (the container's, possibly approximate or None) only serves to centre the clip; the
    real end of the streams decides how much of the window is real. Raises ValueError for an
    invalid [start, end]."""
    clip = cfg.clip_seconds
    start = 0.0 if start is None else float(start)
    if start < 0 or (end is not None and end <= start):
        raise ValueError(f"invalid window start={start} end={end}")
    span_end = float(end) if end is not None else duration  # the part of the file to choose from
    if span_end is not None and duration is not None:
        span_end = min(span_end, duration)
    ws = start
    if cfg.clip_window == "center" and span_end is not None and span_end - start > clip:
        ws = start + (span_end - start - clip) / 2
    content_end = ws + clip if end is None else min(ws + clip, float(end))
    return ws, content_end


def uniform_spans(cfg: MirasolConfig, duration: float | None, start: float | None = None,
                  end: float | None = None) -> list[tuple[float, float]] | None:
    """'uniform': the T equal spans [s_t, e_t) of [start, end] (or of the whole file), or None when
    that part is not longer than one clip or its length is unknown (then the clip is 'start')."""
    lo = 0.0 if start is None else float(start)
    hi = float(end) if end is not None else duration
    if hi is not None and duration is not None:
        hi = min(hi, duration)
    if hi is None or hi - lo <= cfg.clip_seconds + 0.5 / cfg.fps:  # (codec padding: not worth spreading)
        return None
    length = (hi - lo) / cfg.num_chunks
    return [(lo + t * length, lo + (t + 1) * length) for t in range(cfg.num_chunks)]


def uniform_times(cfg: MirasolConfig, spans: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """(frame sample times, audio window starts) of the chunks over `spans`: f frames evenly inside
    each span, and the chunk_seconds of audio in its middle."""
    f, cs = cfg.frames_per_chunk, cfg.chunk_seconds
    frames = [s + (j + 0.5) * (e - s) / f for s, e in spans for j in range(f)]
    audio = [(s + e) / 2 - cs / 2 for s, e in spans]
    return frames, audio


# ---------------------------------------------------------------------------------------------
# Video: one square RGB image per sample time.

def _square_image(frame: av.VideoFrame, size: int, mode: str, pixel_aspect: float) -> np.ndarray:
    """Resize (in FFmpeg, fast) and centre-crop or letterbox `frame` to a [size, size, 3] uint8 image."""
    display_w = frame.width * pixel_aspect  # anamorphic video: scale to the shape it is shown at
    if mode == "crop":  # short side -> size, then cut the middle
        scale = size / min(display_w, frame.height)
        w, h = max(size, round(display_w * scale)), max(size, round(frame.height * scale))
    else:  # letterbox: long side -> size, then pad with black
        scale = size / max(display_w, frame.height)
        w, h = min(size, max(1, round(display_w * scale))), min(size, max(1, round(frame.height * scale)))
    rgb = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
    y0, x0 = abs(h - size) // 2, abs(w - size) // 2
    if mode == "crop":
        image = rgb[y0:y0 + size, x0:x0 + size]
    else:
        image = np.zeros((size, size, 3), np.uint8)
        image[y0:y0 + h, x0:x0 + w] = rgb
    # Phone videos store a display rotation (degrees counter-clockwise); show them upright.
    quarter_turns = round((getattr(frame, "rotation", 0) or 0) / 90) % 4
    if quarter_turns:
        image = np.rot90(image, k=quarter_turns)
    return np.ascontiguousarray(image)


class _FrameSampler:
    """For each target time, keeps the latest frame with pts <= that time, converted once."""

    def __init__(self, targets: list[float], convert):
        self.targets = targets
        self.images: list[np.ndarray] = []  # filled in target order
        self.convert = convert
        self.prev: av.VideoFrame | None = None
        self.prev_image: np.ndarray | None = None  # conversion of self.prev, if it was needed
        self.first_time: float | None = None
        self.last_time: float | None = None
        self.end_time = 0.0  # when the last frame seen stops being shown (pts + duration)

    @property
    def done(self) -> bool:
        return len(self.images) == len(self.targets)

    def push(self, frame: av.VideoFrame, time: float, duration: float) -> None:
        if self.prev is None:  # the first frame also stands in for sample times before it
            self.prev, self.first_time = frame, time
        # Targets before this frame's time were on screen while the previous frame was.
        while not self.done and self.targets[len(self.images)] < time:
            self._take_prev()
        if frame is not self.prev:
            self.prev, self.prev_image = frame, None
        self.last_time = time
        self.end_time = max(self.end_time, time + duration)

    def finish(self) -> None:
        """End of stream: the last frame stays on screen for the remaining targets."""
        while not self.done and self.prev is not None:
            self._take_prev()

    def _take_prev(self) -> None:
        if self.prev_image is None:  # convert lazily: frames that no target shows are never converted
            self.prev_image = self.convert(self.prev)
        self.images.append(self.prev_image)


# ---------------------------------------------------------------------------------------------
# Audio: mono samples for the window, placed by timestamp.

class _AudioWindow:
    """Collects resampled mono audio for samples [0, n_real) of the window; drops the rest.
    `feed` takes the stream's decoded frames (timestamps relative to the file's `origin`)."""

    def __init__(self, window_start: float, n_samples: int, n_real: int, rate: int, origin: float = 0.0):
        self.ws, self.rate, self.n_real, self.origin = window_start, rate, n_real, origin
        self.samples = np.zeros(n_samples, np.float32)
        self.pos: int | None = None  # window index where the next sample lands
        self.real_end = 0  # window index just after the last real sample written
        self.resampler = _MonoResampler(rate)

    def feed(self, frame: av.AudioFrame | None) -> None:
        """One decoded frame of the stream, or None at its end (flushes the resampler)."""
        for out in self.resampler.resample(frame):
            out_time = _seconds(out.pts, out.time_base)
            self.push(out.to_ndarray()[0], None if out_time is None else out_time - self.origin)

    @property
    def done(self) -> bool:
        return self.pos is not None and self.pos >= self.n_real

    def push(self, chunk: np.ndarray, time: float | None) -> None:
        start = self.pos
        if time is not None:
            by_time = round((time - self.ws) * self.rate)
            if start is None or abs(by_time - start) > _AUDIO_JITTER_S * self.rate:
                start = by_time  # first chunk, or a real gap / overlap in the stream
        if start is None:
            start = 0
        self.pos = start + len(chunk)
        lo, hi = max(start, 0), min(self.pos, self.n_real)
        if hi > lo:
            self.samples[lo:hi] = chunk[lo - start:hi - start]
            self.real_end = max(self.real_end, hi)


class _MonoResampler:
    """av.AudioResampler to mono float at `rate`, rebuilt if the input format changes mid-stream."""

    def __init__(self, rate: int):
        self.rate = rate
        self.resampler: av.AudioResampler | None = None
        self.key = None

    def resample(self, frame: av.AudioFrame | None):
        if frame is None:
            return self.resampler.resample(None) if self.resampler is not None else []
        out = []
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if key != self.key:
            out += self.resample(None)  # flush what the old one still holds
            self.resampler, self.key = av.AudioResampler(format="flt", layout="mono", rate=self.rate), key
        return out + self.resampler.resample(frame)


# ---------------------------------------------------------------------------------------------

def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise MediaError(path, "file not found")
    if os.path.isdir(path):
        raise MediaError(path, "is a directory, not a media file")
    if not os.path.isfile(path):  # a pipe or device could block forever
        raise MediaError(path, "not a regular file")
    if os.path.getsize(path) == 0:
        raise MediaError(path, "empty file (0 bytes)")


def _open(path: str, data: bytes | None = None) -> av.container.InputContainer:
    try:
        # FFmpeg may open other files on a file's behalf (playlists, references); never over a network
        return av.open(path if data is None else io.BytesIO(data), metadata_errors="ignore",
                       options={"protocol_whitelist": "file"})
    except (av.FFmpegError, OSError) as error:
        raise MediaError(path, f"cannot open as a media file ({error})") from error


def _pick_video(container, path: str):
    """The first real video stream: cover art and thumbnails (one still picture) do not count."""
    still = av.stream.Disposition.attached_pic | av.stream.Disposition.timed_thumbnails
    moving = [s for s in container.streams.video if not s.disposition & still]
    if not moving:
        reason = "no video stream" if not container.streams.video else "no video stream (only a cover picture)"
        raise MediaError(path, reason)
    if moving[0].codec_context is None:  # damaged headers: FFmpeg found no decoder for it
        raise MediaError(path, "the video stream's codec is unknown or its header is damaged")
    return moving[0]


def _seconds(value, time_base) -> float | None:
    return None if value is None or time_base is None else float(value * time_base)


def _video_sampler(video, cfg: MirasolConfig, targets: list[float]) -> tuple[_FrameSampler, float]:
    """(the sampler of `targets` on `video`, the frame step to assume where a frame has no time)."""
    pixel_aspect = float(video.codec_context.sample_aspect_ratio or 1) or 1.0
    video.thread_type = "AUTO"  # slice + frame threads inside FFmpeg
    sampler = _FrameSampler(targets, lambda f: _square_image(f, cfg.image_size, cfg.resize, pixel_aspect))
    return sampler, 1 / float(video.average_rate) if video.average_rate else 1 / 25


def _frame_time(frame: av.VideoFrame, origin: float, previous: float | None, step: float) -> tuple[float, float]:
    """(when `frame` is shown, for how long), in seconds from the file start; a frame without a
    timestamp follows the previous one by `step`."""
    time = _seconds(frame.pts, frame.time_base)
    time = (previous or 0.0) + step if time is None else time - origin
    return time, _seconds(getattr(frame, "duration", None), frame.time_base) or step


def _result(video, audio, frames: np.ndarray, waveform: np.ndarray, duration: float | None,
            **window) -> DecodedMedia:
    """The DecodedMedia of `frames` and `waveform`, with what the streams say about the file."""
    return DecodedMedia(frames=frames, waveform=waveform, has_audio=audio is not None, duration=duration,
                        source_fps=float(video.average_rate) if video.average_rate else None,
                        width=video.codec_context.width, height=video.codec_context.height, **window)


def decode_media(path: str | os.PathLike | bytes, cfg: MirasolConfig, start: float | None = None,
                 end: float | None = None, name: str | None = None) -> DecodedMedia:
    """Decode the clip window of `path` chosen from [start, end] (seconds) and cfg. See module doc.

    `path` may also be the file's bytes (a video read from a shard); `name` then names it in errors.
    The same demuxer and decoder run on them, so the result is the file's."""
    data = bytes(path) if isinstance(path, (bytes, bytearray, memoryview)) else None
    if data is None:
        path = os.fspath(path)
        _check_file(path)
    else:
        path = name or "<bytes>"
        if not data:
            raise MediaError(path, "empty file (0 bytes)")
    for seek_back in (SEEK_MARGIN_S, *SEEK_BACKOFF_S, None):  # None: from the start, no seek
        container = _open(path, data)
        try:
            result = _decode(container, path, cfg, start, end, seek_back)
        except (av.FFmpegError, OSError) as error:  # corrupt or truncated data
            raise MediaError(path, f"decoding failed ({error})") from error
        finally:
            container.close()
        if result is not None:
            result.seek_fallback = seek_back != SEEK_MARGIN_S
            return result
    raise AssertionError("unreachable: decoding from the beginning always returns")


def _decode(container, path: str, cfg: MirasolConfig, start, end, seek_back: float | None) -> DecodedMedia | None:
    """Decode after seeking `seek_back` seconds before the window (None: from the start). Returns
    None when the seek overshot the window or found no frame (no index, sparse keyframes); the
    caller retries further back."""
    video = _pick_video(container, path)
    audio = container.streams.best("audio")
    if audio is None and cfg.missing_audio != "zeros":
        raise NoAudioError(path, f"no audio stream (missing_audio={cfg.missing_audio!r})")

    # Seconds from the start of the file = pts * time_base - origin.
    origin = container.start_time / av.time_base if container.start_time is not None else 0.0
    duration = container.duration / av.time_base if container.duration else None
    try:
        ws, content_end = plan_window(cfg, duration, start, end)
    except ValueError as error:
        raise MediaError(path, str(error)) from None
    spans = uniform_spans(cfg, duration, start, end) if cfg.clip_window == "uniform" else None
    if spans is not None:
        return _decode_uniform(container, path, cfg, video, audio, origin, duration, spans,
                               from_beginning=seek_back != SEEK_MARGIN_S)

    # Sample times of the real frames; the rest of the clip repeats the last one.
    n_real_frames = min(cfg.num_frames, max(1, math.ceil((content_end - ws) * cfg.fps - 0.5)))
    targets = [ws + (i + 0.5) / cfg.fps for i in range(n_real_frames)]
    sampler, nominal_step = _video_sampler(video, cfg, targets)
    clip_samples = round(cfg.clip_seconds * cfg.sample_rate)
    real_samples = min(clip_samples, round((content_end - ws) * cfg.sample_rate))
    sound = _AudioWindow(ws, clip_samples, real_samples, cfg.sample_rate, origin)

    seek_to = 0.0 if seek_back is None else max(0.0, ws - seek_back)
    seeked = False
    if seek_to > 0:
        try:
            container.seek(round((origin + seek_to) / video.time_base), stream=video, backward=True)
            seeked = True
        except av.FFmpegError:
            pass  # not seekable: decode from the beginning

    reached_eof = True
    for packet in container.demux(*[s for s in (video, audio) if s is not None]):
        if packet.stream is video:
            for frame in packet.decode():
                time, shown_for = _frame_time(frame, origin, sampler.last_time, nominal_step)
                if seeked and sampler.first_time is None and time > targets[0] + 1e-6:
                    if _stream_start(video, origin) < time - 1e-6:
                        return None  # the seek landed after the window although earlier frames exist
                sampler.push(frame, time, shown_for)
        else:
            for frame in packet.decode():
                sound.feed(frame)
        packet_time = _seconds(packet.pts, packet.time_base)
        if (sampler.done and (audio is None or sound.done)) or (
                packet_time is not None and packet_time - origin > content_end + READ_AHEAD_S):
            reached_eof = False
            break
    if seeked and sampler.first_time is None:
        return None  # the seek led to no decodable frame (e.g. no keyframe after it before the end)
    sound.feed(None)

    # A frame after the last sample time was seen: the video is real up to content_end. Otherwise
    # the stream ended inside the window and the last frame is held from its end on.
    video_end = content_end if sampler.done else min(sampler.end_time, content_end)
    sampler.finish()
    if not sampler.images:
        raise MediaError(path, "no decodable video frames")
    declared_end = _stream_end(video, origin)
    if reached_eof and declared_end is not None and video_end < min(content_end, declared_end) - TRUNCATION_S:
        raise MediaError(path, f"truncated or corrupt: video data ends at {sampler.end_time:.2f} s but the "
                               f"file declares {declared_end:.2f} s")
    video_seconds = max(0.0, video_end - ws)
    audio_seconds = sound.real_end / cfg.sample_rate
    if max(video_seconds, audio_seconds) <= 0:
        raise MediaError(path, f"nothing to decode in the window starting at {ws:g} s "
                               f"(video ends at {sampler.end_time:g} s)")

    frames = np.stack(sampler.images + [sampler.images[-1]] * (cfg.num_frames - len(sampler.images)))
    return _result(video, audio, frames, sound.samples, duration, window_start=ws,
                   window_end=ws + cfg.clip_seconds, video_seconds=video_seconds, audio_seconds=audio_seconds)


def _decode_uniform(container, path: str, cfg: MirasolConfig, video, audio, origin: float,
                    duration: float | None, spans: list[tuple[float, float]],
                    from_beginning: bool = False) -> DecodedMedia | None:
    """'uniform' (see module doc): a video pass that seeks from sample to sample where that skips
    frames, then one short audio read per chunk. Returns None when a seek lands after its sample
    time or finds no frame (the caller retries with `from_beginning`: one pass, no seeks)."""
    targets, audio_starts = uniform_times(cfg, spans)
    sampler, nominal_step = _video_sampler(video, cfg, targets)

    pos = None  # time of the last decoded frame
    gop, last_key = MIN_SEEK_GAP_S, None  # longest keyframe interval seen, last keyframe time
    if from_beginning:
        gop, pos = float("inf"), 0.0
    while not sampler.done:
        target = targets[len(sampler.images)]
        seeked = False
        if pos is None or target - pos > gop:
            last_key = None  # keyframe intervals are measured within one stretch of decoding
            try:
                container.seek(round((origin + max(0.0, target - SEEK_MARGIN_S)) / video.time_base),
                               stream=video, backward=True)
                seeked = True
            except av.FFmpegError:
                if pos is not None:
                    gop = float("inf")  # not seekable: read on from here
        ended, filled = True, len(sampler.images)
        for packet in container.demux(video):
            for frame in packet.decode():
                time, shown_for = _frame_time(frame, origin, pos, nominal_step)
                if seeked and time > target + 1e-6 and _stream_start(video, origin) < time - 1e-6:
                    return None  # the seek landed after the sample time although earlier frames exist
                seeked = False
                if frame.key_frame:
                    if last_key is not None and time > last_key:
                        gop = max(gop, time - last_key)
                    last_key = time
                sampler.push(frame, time, shown_for)
                pos = time
            if sampler.done or (len(sampler.images) > filled and targets[len(sampler.images)] - pos > gop):
                ended = False
                break  # done, or (having filled a sample) the next one is far enough ahead to seek to
        if ended:
            if seeked:
                return None  # the seek led to no decodable frame
            break  # end of the stream: the last frame stays on screen
    sampler.finish()
    if not sampler.images:
        raise MediaError(path, "no decodable video frames")

    per_chunk = round(cfg.chunk_seconds * cfg.sample_rate)
    waveform = np.zeros(per_chunk * len(spans), np.float32)
    real = 0
    if audio is not None:
        for t, a0 in enumerate(audio_starts):
            sound = _read_audio(container, audio, origin, a0, per_chunk, cfg.sample_rate)
            waveform[t * per_chunk:(t + 1) * per_chunk] = sound.samples
            real += sound.real_end
    return _result(video, audio, np.stack(sampler.images), waveform, duration, window_start=spans[0][0],
                   window_end=spans[-1][1], video_seconds=cfg.clip_seconds, audio_seconds=real / cfg.sample_rate,
                   spans=spans)


def _read_audio(container, audio, origin: float, start: float, n_samples: int, rate: int) -> "_AudioWindow":
    """Mono audio for [start, start + n_samples / rate), read by seeking the audio stream alone."""
    sound = _AudioWindow(start, n_samples, n_samples, rate, origin)
    try:
        container.seek(round((origin + max(0.0, start - SEEK_MARGIN_S)) / audio.time_base), stream=audio,
                       backward=True)
    except av.FFmpegError:
        pass  # not seekable: read on from where the container is
    end = start + n_samples / rate
    for packet in container.demux(audio):
        for frame in packet.decode():
            sound.feed(frame)
        packet_time = _seconds(packet.pts, packet.time_base)
        if sound.done or (packet_time is not None and packet_time - origin > end + READ_AHEAD_S):
            break
    sound.feed(None)
    return sound


def _stream_start(stream, origin: float) -> float:
    start = _seconds(stream.start_time, stream.time_base)
    return 0.0 if start is None else start - origin


def _stream_end(stream, origin: float) -> float | None:
    """Where the stream's header says it ends (seconds from the file start), when it says."""
    length = _seconds(stream.duration, stream.time_base)
    return None if not length else _stream_start(stream, origin) + length
