"""Forward-only decoding of a live source into the model's chunks.

    for live in live_chunks("udp://127.0.0.1:5000", cfg):   # or a growing file, a device, a file
        session.push(live.chunk.video[None], live.chunk.audio[None])

A source is read once, front to back, with no seeking: a file that is still being written
(followed as it grows), a network stream FFmpeg opens live (udp, rtp, rtsp, rtmp, http(s) and
HLS playlists, srt, tcp), a capture device (/dev/video*: v4l2), or a finished file (as fast as
it decodes, or at its own pace with `realtime`). Chunk t is yielded as soon as its seconds, and the few
milliseconds of the next one that its spectrogram reads, have arrived.

The chunks equal those of `iter_chunks` (the path `ask --at` streams): chunk t covers seconds
[t * chunk_seconds, (t + 1) * chunk_seconds) from the container's start time, frame i shows the
latest picture with pts <= t * chunk_seconds + (i + 0.5) / fps (media/decode.py's sampling
rule), audio is resampled to mono and placed by timestamp, and the log-mel frames near a chunk's
edges read the neighbouring chunks' samples. A chunk counts when real content reaches its first
frame time; the last one is padded (last frame held, silence) and says how much of it is real.
A network stream or device joined mid-stream starts at its first decodable picture instead (time
0; audio before it is dropped), and undecodable packets until then (or lost ones later) are
skipped, until none has decoded for `stall_timeout` seconds.

How a source ends (each raises a MediaError subclass naming the source, so a caller can say it in
one line and keep what it already answered):
- a finished file: its end, normally;
- a followed file: no growth for `stall_timeout` seconds is taken as its end, normally;
- a live source that closes or fails: SourceEnded; one that sends nothing for `stall_timeout`
  seconds: SourceStalled; no audio stream (unless `silent_ok`): NoAudioError.

Memory: one decoded frame, the converted frames of the chunk being filled, and about one chunk of
audio, whatever the stream's length.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlparse

import av
import numpy as np

from mirasol.config import MirasolConfig
from mirasol.media.clip import MediaChunk
from mirasol.media.decode import (_AUDIO_JITTER_S, MediaError, NoAudioError, _MonoResampler, _pick_video,
                                  _seconds, _square_image)
from mirasol.media.features import chunk_features, context_samples

NETWORK_SCHEMES = ("udp", "rtp", "rtsp", "rtmp", "http", "https", "srt", "tcp")  # HLS: an http(s) .m3u8 URL
DEFAULT_STALL_TIMEOUT_S = 10.0
# A live source's streams are identified from this much of it (FFmpeg's default, 5 s, would hold
# the first answers back by as much).
LIVE_ANALYZE_US = "1000000"
# UDP: a large socket buffer and receive queue, so that a busy moment loses no datagrams, and a
# queue overrun loses data instead of ending the stream.
UDP_OPTIONS = {"buffer_size": str(8 << 20), "fifo_size": str(50_000), "overrun_nonfatal": "1"}
# A followed file is polled this often for new bytes.
FOLLOW_POLL_S = 0.05
# A file modified this recently is taken to be still written, and followed.
FOLLOW_RECENT_S = 5.0
# ...unless it is MP4/MOV, whose index is written last (a fragmented one is followed when asked).
UNFOLLOWED_SUFFIXES = (".mp4", ".m4v", ".mov", ".m4a", ".3gp")


class SourceEnded(MediaError):
    """A live source closed or failed before it was asked to stop."""


class SourceStalled(MediaError):
    """A live source sent nothing for the stall time-out."""


@dataclass
class LiveChunk:
    chunk: MediaChunk
    arrived: float  # wall-clock time (time.time()) at which the chunk's data was all in


def source_kind(source: str, follow: bool | None = None) -> str:
    """'network', 'device', 'growing' (a file being written) or 'file' (finished)."""
    scheme = urlparse(source).scheme.lower() if "://" in source else ""
    if scheme in NETWORK_SCHEMES:
        return "network"
    if scheme:
        raise MediaError(source, f"unsupported scheme {scheme!r}: use a file, a device, or one of "
                                 f"{', '.join(NETWORK_SCHEMES)}")
    if source.startswith("/dev/video"):
        return "device"
    if not os.path.exists(source):
        raise MediaError(source, "file not found")
    if not os.path.isfile(source):
        raise MediaError(source, "not a regular file, a /dev/video device or a stream URL")
    if follow is None:
        follow = (time.time() - os.path.getmtime(source) < FOLLOW_RECENT_S
                  and not source.lower().endswith(UNFOLLOWED_SUFFIXES))
    return "growing" if follow else "file"


class _FollowedFile:
    """A file being written, read as a stream: at its current end a read waits for more bytes, and
    returns end of file once it has not grown for `idle_s` seconds. Not seekable, on purpose: the
    demuxer must not look for an end that is not written yet."""

    def __init__(self, path: str, idle_s: float):
        self.file, self.idle_s = open(path, "rb"), idle_s  # noqa: SIM115 (closed by close())
        self.ended = False

    def read(self, n: int) -> bytes:
        waited_since = None
        while not self.ended:
            data = self.file.read(n)
            if data:
                return data
            now = time.monotonic()
            waited_since = waited_since or now
            if now - waited_since >= self.idle_s:
                self.ended = True  # for good: the demuxer may ask again after end of file
            else:
                time.sleep(FOLLOW_POLL_S)
        return b""

    def close(self) -> None:
        self.file.close()


def _open_source(source: str, kind: str, stall_timeout: float):
    """(container, closeable extra or None)."""
    try:
        if kind == "growing":
            handle = _FollowedFile(source, stall_timeout)
            return av.open(handle, metadata_errors="ignore", options={"analyzeduration": LIVE_ANALYZE_US}), handle
        if kind == "file":
            if os.path.getsize(source) == 0:
                raise MediaError(source, "empty file (0 bytes)")
            return av.open(source, metadata_errors="ignore"), None
        device = {"format": "v4l2"} if kind == "device" else {}
        options = {"analyzeduration": LIVE_ANALYZE_US}
        if urlparse(source).scheme.lower() in ("udp", "rtp"):
            options.update(UDP_OPTIONS)
        return av.open(source, metadata_errors="ignore", timeout=(stall_timeout, stall_timeout), options=options,
                       **device), None
    except (av.FFmpegError, OSError) as error:
        if kind in ("network", "device") and isinstance(error, av.ExitError):
            raise SourceStalled(source, f"nothing arrived within {stall_timeout:g} s of opening it") from None
        raise MediaError(source, f"cannot open as a media source ({error})") from error


class _ForwardFrames:
    """Frame sampling of media/decode.py, run over an unbounded stream: sample time k (frame i of
    chunk t) shows the latest frame with time <= t * chunk_seconds + (i + 0.5) / fps; the first
    frame stands in for sample times before it. Converted frames are kept per chunk until taken."""

    def __init__(self, cfg: MirasolConfig, convert):
        self.f, self.fps, self.seconds = cfg.frames_per_chunk, cfg.fps, cfg.chunk_seconds
        self.convert = convert
        self.k = 0  # next sample to fill
        self.prev = self.prev_image = None
        self.images: dict[int, list[np.ndarray]] = {}
        self.last_time: float | None = None
        self.end_time = 0.0  # when the last frame seen stops being shown

    def target(self, k: int) -> float:
        t, i = divmod(k, self.f)
        return (0.0 + t * self.seconds) + (i + 0.5) / self.fps  # the float iter_chunks computes

    def push(self, frame, time_s: float, duration: float) -> None:
        if self.prev is None:
            self.prev = frame
        while self.target(self.k) < time_s:
            self._take()
        if frame is not self.prev:
            self.prev, self.prev_image = frame, None
        self.last_time = time_s
        self.end_time = max(self.end_time, time_s + duration)

    def filled(self, t: int) -> bool:
        """Every sample of chunk t has its frame (a later frame was seen)."""
        return self.k >= (t + 1) * self.f

    def finish(self, t: int) -> None:
        """End of stream: the last frame stays on screen for chunk t's remaining samples."""
        while self.prev is not None and not self.filled(t):
            self._take()

    def pop(self, t: int) -> list[np.ndarray]:
        return self.images.pop(t, [])

    def _take(self) -> None:
        if self.prev_image is None:
            self.prev_image = self.convert(self.prev)
        self.images.setdefault(self.k // self.f, []).append(self.prev_image)
        self.k += 1


class _ForwardAudio:
    """Mono samples placed by timestamp (media/decode.py's rule: contiguous unless the timestamp
    jumps by more than the jitter), in a buffer that drops what no chunk needs any more."""

    def __init__(self, rate: int):
        self.rate = rate
        self.base = 0  # absolute sample index of buffer[0]
        self.buffer = np.zeros(0, np.float32)
        self.pos: int | None = None  # absolute index where the next sample lands
        self.real_end = 0  # absolute index just after the last real sample

    def push(self, samples: np.ndarray, time_s: float | None) -> None:
        start = self.pos
        if time_s is not None:
            by_time = round(time_s * self.rate)
            if start is None or abs(by_time - start) > _AUDIO_JITTER_S * self.rate:
                start = by_time
        if start is None:
            start = 0
        self.pos = start + len(samples)
        lo = max(start, self.base, 0)
        if self.pos <= lo:
            return
        need = self.pos - self.base
        if need > len(self.buffer):
            self.buffer = np.concatenate([self.buffer, np.zeros(need - len(self.buffer), np.float32)])
        self.buffer[lo - self.base:self.pos - self.base] = samples[lo - start:]
        self.real_end = max(self.real_end, self.pos)

    def span(self, lo: int, hi: int) -> np.ndarray:
        """Samples [lo, hi) (absolute); silence where nothing real was written."""
        out = np.zeros(hi - lo, np.float32)
        a, b = max(lo, self.base), min(hi, self.base + len(self.buffer), self.real_end)
        if b > a:
            out[a - lo:b - lo] = self.buffer[a - self.base:b - self.base]
        return out

    def drop_before(self, index: int) -> None:
        if index > self.base:
            cut = min(index - self.base, len(self.buffer))
            self.buffer, self.base = self.buffer[cut:], self.base + cut


class _Assembler:
    """Builds chunks from decoded frames and audio in arrival order; `ready()` says which are complete."""

    def __init__(self, cfg: MirasolConfig, convert, has_audio: bool):
        import torch

        self.torch, self.cfg, self.has_audio = torch, cfg, has_audio
        self.frames = _ForwardFrames(cfg, convert)
        self.audio = _ForwardAudio(cfg.sample_rate)
        self.n = round(cfg.chunk_seconds * cfg.sample_rate)  # samples per chunk
        self.side = context_samples(cfg)  # audio context on each side
        self.next = 0  # next chunk to yield
        # Chunk t+1 surely counts (real content past its first frame time) once this far into it.
        self.lead = max(self.side / cfg.sample_rate, 0.5 / cfg.fps) + 1e-6

    def ready(self) -> bool:
        """Chunk `next` is complete and the next one surely exists."""
        edge = (self.next + 1) * self.cfg.chunk_seconds + self.lead
        video_in = self.frames.filled(self.next) and self.frames.last_time is not None \
            and self.frames.last_time >= edge
        audio_in = not self.has_audio or (self.audio.pos is not None and self.audio.pos >= edge * self.cfg.sample_rate)
        return video_in and audio_in

    def take(self, valid: float | None = None, last: bool = False) -> MediaChunk:
        cfg, t = self.cfg, self.next
        self.frames.finish(t)
        images = self.frames.pop(t)
        images += [images[-1]] * (cfg.frames_per_chunk - len(images))
        lo, hi = t * self.n, (t + 1) * self.n
        wave = self.audio.span(lo - self.side, hi + (0 if last else self.side))
        if last:  # no next chunk: its samples are silence, as iter_chunks pads
            wave = np.concatenate([wave, np.zeros(self.side, np.float32)])
        features = chunk_features(wave, cfg)
        video = self.torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
        self.audio.drop_before(hi - self.side)
        self.next += 1
        return MediaChunk(index=t, start=t * cfg.chunk_seconds, video=video, audio=features,
                          valid_seconds=cfg.chunk_seconds if valid is None else valid,
                          has_audio=self.has_audio, duration=None)

    def real_seconds(self, t: int) -> float:
        """How much of chunk t is real at the end of the stream (decode_media's video / audio seconds)."""
        cfg, ws = self.cfg, t * self.cfg.chunk_seconds
        end = min(self.frames.end_time, ws + cfg.chunk_seconds)
        video = cfg.chunk_seconds if self.frames.filled(t) else max(0.0, end - ws)
        audio = min(max(self.audio.real_end - t * self.n, 0), self.n) / cfg.sample_rate
        return min(cfg.chunk_seconds, max(video, audio))

    def rest(self) -> Iterator[MediaChunk]:
        """At the end of the stream: the chunks still due (iter_chunks' rule for which count)."""
        counts = lambda t: t == 0 or self.real_seconds(t) > 0.5 / self.cfg.fps + 1e-9  # noqa: E731
        if self.frames.prev is None:
            return
        while counts(self.next):
            t = self.next
            last = not counts(t + 1)
            yield self.take(valid=self.real_seconds(t), last=last)
            if last:
                return


def live_chunks(source: str, cfg: MirasolConfig, realtime: bool = False, follow: bool | None = None,
                stall_timeout: float = DEFAULT_STALL_TIMEOUT_S, silent_ok: bool = False,
                until: float | None = None) -> Iterator[LiveChunk]:
    """Yield `source`'s chunks as they arrive (see the module doc); stop after `until` seconds of
    video. Raises MediaError (SourceEnded, SourceStalled, NoAudioError) as the module doc says."""
    kind = source_kind(source, follow)
    container, handle = _open_source(source, kind, stall_timeout)
    try:
        yield from _run(container, source, kind, cfg, realtime, stall_timeout, silent_ok, until)
    finally:
        container.close()
        if handle is not None:
            handle.close()


def live_chunks_from(reader, name: str, cfg: MirasolConfig, format: str | None = None, check=None,
                     silent_ok: bool = False) -> Iterator[LiveChunk]:
    """`live_chunks` over a live stream's bytes read from `reader` (an object with `read(n)` that
    returns b"" at the stream's end), as a network stream is read: what opens no connection of
    its own (the server's sandboxed decoder reads what the server relays). `format`: the
    container (None: probed); `check(container)` may refuse it (raise) before anything decodes;
    `name` is the source's name in messages."""
    options = {"analyzeduration": LIVE_ANALYZE_US, "protocol_whitelist": "file"}
    try:
        container = av.open(reader, format=format, metadata_errors="ignore", options=options)
    except (av.FFmpegError, OSError, ValueError) as error:
        raise SourceEnded(name, f"cannot open the stream as media ({error})") from error
    try:
        if check is not None:
            check(container)
        yield from _run(container, name, "network", cfg, False, DEFAULT_STALL_TIMEOUT_S, silent_ok, None)
    finally:
        container.close()


def _run(container, source: str, kind: str, cfg: MirasolConfig, realtime: bool, stall_timeout: float,
         silent_ok: bool, until: float | None) -> Iterator[LiveChunk]:
    video = _pick_video(container, source)
    audio = container.streams.best("audio")
    if audio is None and not silent_ok:
        raise NoAudioError(source, "no audio stream: the model would hear only silence (pass --silent to "
                                   "watch it anyway)")
    origin = container.start_time / av.time_base if container.start_time is not None else 0.0
    live = kind in ("network", "device")
    # Joined mid-stream, nothing is shown before the first keyframe: time 0 is the first picture.
    joined = not live
    pixel_aspect = float(video.codec_context.sample_aspect_ratio or 1) or 1.0
    assembler = _Assembler(cfg, lambda f: _square_image(f, cfg.image_size, cfg.resize, pixel_aspect),
                           audio is not None)
    resampler = _MonoResampler(cfg.sample_rate)
    nominal_step = 1 / float(video.average_rate) if video.average_rate else 1 / 25
    video.thread_type = "AUTO"
    max_chunks = None if until is None else max(1, math.ceil(until / cfg.chunk_seconds - 1e-9))
    wall0 = last_good = time.monotonic()

    def feed_audio(frames) -> None:
        for out in frames if joined else ():
            out_time = _seconds(out.pts, out.time_base)
            assembler.audio.push(out.to_ndarray()[0], None if out_time is None else out_time - origin)

    def video_seconds() -> float:
        return assembler.next * cfg.chunk_seconds

    try:
        for packet in container.demux(*[s for s in (video, audio) if s is not None]):
            packet_time = _seconds(packet.pts, packet.time_base)
            if realtime and kind == "file" and packet_time is not None:
                delay = wall0 + (packet_time - origin) - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            try:
                frames = packet.decode()
            except av.InvalidDataError:
                if not live or time.monotonic() - last_good > stall_timeout:
                    raise
                continue  # joined mid-stream: undecodable until the next keyframe (or a lost packet)
            last_good = time.monotonic()
            if packet.stream is video:
                for frame in frames:
                    t = _seconds(frame.pts, frame.time_base)
                    if not joined:
                        origin, joined = (origin if t is None else t), True
                    t = (assembler.frames.last_time or 0.0) + nominal_step if t is None else t - origin
                    shown_for = _seconds(getattr(frame, "duration", None), frame.time_base) or nominal_step
                    assembler.frames.push(frame, t, shown_for)
            else:
                for frame in frames:
                    feed_audio(resampler.resample(frame))
            while assembler.ready():
                yield LiveChunk(assembler.take(), time.time())
                if max_chunks is not None and assembler.next >= max_chunks:
                    return
    except av.ExitError:  # the read time-out
        raise SourceStalled(source, f"no data for {stall_timeout:g} s after {video_seconds():g} s of video") from None
    except (av.FFmpegError, OSError) as error:
        if live:
            raise SourceEnded(source, f"the stream failed after {video_seconds():g} s of video ({error})") from error
        raise MediaError(source, f"decoding failed after {video_seconds():g} s of video ({error})") from error
    feed_audio(resampler.resample(None))
    if assembler.frames.prev is None:
        raise MediaError(source, "no decodable video frames")
    for chunk in assembler.rest():
        yield LiveChunk(chunk, time.time())
        if max_chunks is not None and assembler.next >= max_chunks:
            return
    if live:
        raise SourceEnded(source, f"the stream ended after {video_seconds():g} s of video")
