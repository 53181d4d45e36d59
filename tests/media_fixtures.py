"""Test media: small files in each container and codec the decoder promises, written with PyAV once
per test session, plus the optional real sample files (MIRASOL_SAMPLES=DIR, holding media/ and
annotations/) as a second source that the same tests also run on.

Each file plays a role that tests ask for by name (`media.path("long")`); a role's facts (length,
audio, container duration) are what the tests check the decoder against. The generated files
reproduce the odd properties of the real samples (see the real folder's README): Matroska with Opus,
WebM VP8 + Vorbis shorter than a chunking, WebM VP9 + Opus without a container duration and with
digitally silent audio, AVI with MPEG-4 Part 2 and MP3, a 1x1 H.264 file without audio, a QuickTime
file of three frames; and add what the real ones lack: a rotated phone video, variable frame rate.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from mirasol.media.writer import write_video

SAMPLES_ENV = "MIRASOL_SAMPLES"


@dataclass(frozen=True)
class Facts:
    """What a file holds. `seconds`: how long its content lasts; `audible`: audio that is not digital
    silence; `has_duration`: the container states its length; `seek_exact_audio`: decoding from a
    seek gives the same audio samples as decoding from the start (false for Opus, whose pre-roll
    restarts after a seek, and for MP3 in AVI with keyframes to seek to: both land a few samples
    off; the real AVI sample has a single keyframe, so it is never seeked into)."""

    seconds: float
    has_audio: bool
    audible: bool = True
    has_duration: bool = True
    seek_exact_audio: bool = True
    width: int = 0
    height: int = 0

    def tiny_chunks(self) -> int:
        """How many of the tiny preset's 1 s chunks the file fills (a chunk counts when real content
        reaches its first frame time, as in load_clip)."""
        from mirasol import MirasolConfig
        from mirasol.media.clip import count_valid_chunks

        return count_valid_chunks(self.seconds, MirasolConfig.preset("tiny", num_chunks=10_000))


# Roles shared by both sources. A test that needs "a file longer than two clips, with audio" asks for
# "long"; each source says which of its files that is.
ROLES = ("long", "fits", "longer", "short", "no_duration", "one_pixel", "no_audio", "three_frames")

# The real sample files (their folder's README) in each role, with their facts.
REAL = {
    "flipping_a_pancake.mkv": ("long", Facts(10.38, True, seek_exact_audio=False, width=426, height=240)),
    "example3.mp4": ("fits", Facts(2.0, True, width=854, height=480)),
    "test.avi": ("longer", Facts(6.56, True, width=320, height=240)),
    "big_buck_bunny_432_433.webm": ("short", Facts(1.0, True, width=1280, height=720)),
    "no_duration.webm": ("no_duration", Facts(4.9, True, audible=False, has_duration=False, width=1280, height=720)),
    "one_pixel.mp4": ("one_pixel", Facts(5.0, False, width=1, height=1)),
    "rawvideo_part_0.mp4": ("no_audio", Facts(1.07, False, width=340, height=256)),
    "video_0.mov": ("three_frames", Facts(0.1, False, width=568, height=320)),
}

# name -> (role or None, facts); the writers are below (GENERATORS).
GENERATED = {
    "long.mkv": ("long", Facts(10.4, True, seek_exact_audio=False, width=160, height=96)),
    "fits.mp4": ("fits", Facts(2.0, True, width=320, height=180)),
    "longer.avi": ("longer", Facts(6.6, True, seek_exact_audio=False, width=96, height=64)),
    "short.webm": ("short", Facts(1.0, True, width=128, height=72)),
    "no_duration.webm": ("no_duration", Facts(4.9, True, audible=False, has_duration=False, width=128, height=72)),
    "one_pixel.mp4": ("one_pixel", Facts(5.0, False, width=1, height=1)),
    "no_audio.mp4": ("no_audio", Facts(1.08, False, width=96, height=64)),
    "three_frames.mov": ("three_frames", Facts(0.1, False, width=96, height=64)),
    "rotated.mp4": (None, Facts(2.0, True, width=96, height=64)),  # shown rotated by -90 degrees
    "vfr.mp4": (None, Facts(4.4, True, width=64, height=48)),
}
# Files that must fail, with the reason the decoder gives; kept in their own folder so that the
# folder of good files can serve as `mirasol serve --examples`. The truncated file's index promises
# 2 s; its first half decodes.
BROKEN = {"audio_only.m4a": "no video stream", "truncated.mp4": "truncated"}
# The variable frame rate file's frame times (seconds).
VFR_TIMES = [0.0, 0.1, 0.2, 0.3, 1.0, 1.05, 1.1, 1.9, 2.6, 2.7, 2.8, 2.9, 3.5, 3.9, 4.3]


# ------------------------------------------------------------------------------------------------
# Content: smooth moving pictures (codec-friendly, so round trips keep a high PSNR) and a tone.

def moving_frames(count: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """[count, height, width, 3] uint8: slow colour waves that drift (the same picture at any size,
    smooth enough to keep its detail at the model's 32 px) and a bright box that moves."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = u / max(1, width), v / max(1, height)
    frames = np.empty((count, height, width, 3), np.uint8)
    box = max(1, min(width, height) // 4)
    for k in range(count):
        phase = 0.02 * k + 0.1 * seed
        frames[k, ..., 0] = 128 + 100 * np.sin(2 * np.pi * (1.2 * u + phase))
        frames[k, ..., 1] = 128 + 100 * np.cos(2 * np.pi * (0.9 * v - phase))
        frames[k, ..., 2] = 128 + 80 * np.sin(2 * np.pi * (0.7 * (u + v) + 2 * phase))
        x0, y0 = (2 * k) % max(1, width - box), k % max(1, height - box)
        frames[k, y0:y0 + box, x0:x0 + box] = 240
    return frames


def tone(seconds: float, rate: int, channels: int = 1, hz: float = 440.0) -> np.ndarray:
    """[channels, samples] float32: a sine at `hz`, a little quieter on each further channel."""
    t = np.arange(round(seconds * rate)) / rate
    return np.stack([(0.3 / (c + 1)) * np.sin(2 * np.pi * hz * t) for c in range(channels)]).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# A PyAV writer for the containers and codecs that media.writer (mp4, H.264/MPEG-4 + AAC) does not make.

def _audio_frames(stream, audio: np.ndarray, rate: int):
    """The audio as frames of the encoder's size (or 1024 samples), in the encoder's sample format."""
    ctx = stream.codec_context
    size = ctx.frame_size or 1024
    layout = "mono" if audio.shape[0] == 1 else "stereo"
    fmt = ctx.format.name
    planar = ctx.format.is_planar
    for pos in range(0, audio.shape[1], size):
        block = audio[:, pos:pos + size]
        if block.shape[1] < size:
            block = np.pad(block, ((0, 0), (0, size - block.shape[1])))
        if fmt.startswith(("s16", "s32")):
            bits = 16 if fmt.startswith("s16") else 32
            block = (np.clip(block, -1, 1) * (2 ** (bits - 1) - 1)).astype(np.int16 if bits == 16 else np.int32)
        data = block if planar else block.T.reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = rate, pos, Fraction(1, rate)
        yield frame


def write_av(path: Path, fmt: str, vcodec: str, frames: np.ndarray, fps: int, acodec: str | None = None,
             audio: np.ndarray | None = None, rate: int = 48000, pix_fmt: str = "yuv420p",
             container_options: dict | None = None, gop: int | None = None) -> Path:
    """Write `frames` ([N, H, W, 3] uint8) at `fps` and, when given, `audio` ([channels, samples] at
    `rate`) with `acodec`, to container `fmt`. Single-threaded, so the bytes are the same each time.
    `gop` (libx264): frames from one keyframe to the next, fixed (no extra keyframes at scene cuts)."""
    with av.open(str(path), "w", format=fmt, options=container_options or {}) as out:
        video = out.add_stream(vcodec, rate=fps)
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        video.codec_context.thread_count = 1
        if vcodec == "libx264":
            video.codec_context.options = {"preset": "veryfast", "crf": "20", "bf": "0", "threads": "1"}
            if gop is not None:
                video.codec_context.options = {**video.codec_context.options, "g": str(gop),
                                               "keyint_min": str(gop), "sc_threshold": "0"}
        elif vcodec in ("libvpx", "libvpx-vp9"):
            video.codec_context.options = {"deadline": "realtime", "cpu-used": "8", "crf": "20", "threads": "1"}
            video.codec_context.bit_rate = 400_000
        else:
            video.codec_context.qscale = 3
        sound = None
        if audio is not None:
            sound = out.add_stream(acodec, rate=rate)
            sound.layout = "mono" if audio.shape[0] == 1 else "stereo"
            sound.codec_context.options = {"strict": "experimental"}  # FFmpeg's own Vorbis encoder
        # interleave: each second of audio goes out before the video of that second
        pending = list(_audio_frames(sound, audio, rate)) if sound is not None else []
        for k, image in enumerate(frames):
            while pending and pending[0].pts / rate <= k / fps:
                out.mux(sound.encode(pending.pop(0)))
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = k, Fraction(1, fps)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        for frame in pending:
            out.mux(sound.encode(frame))
        if sound is not None:
            out.mux(sound.encode(None))
    return path


def remux(src, dst, fmt: str, audio: bool = True) -> None:
    """Copy `src`'s streams (without audio if asked) into a `fmt` container, no re-encoding."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format=fmt) as out:
        kept = [s for s in inp.streams if s.type == "video" or (audio and s.type == "audio")]
        streams = {s.index: out.add_stream_from_template(s) for s in kept}
        for packet in inp.demux(*kept):
            if packet.dts is None:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)


def set_mp4_rotation(path: Path, degrees: int) -> None:
    """Store a display rotation (degrees counter-clockwise, a multiple of 90) in the first track's
    header matrix of an mp4/mov file, as phones do; the picture itself is unchanged."""
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")
    if at < 0:
        raise ValueError(f"{path}: no track header")
    version = data[at + 4]
    matrix = at + 4 + 4 + (32 if version == 1 else 20) + 16  # past version/flags, times/ids, layer/volume
    cos, sin = {0: (1, 0), 90: (0, 1), 180: (-1, 0), 270: (0, -1)}[degrees % 360]
    # (a, b, u, c, d, v, x, y, w): a..d in 16.16 fixed point, w in 2.30; FFmpeg reads a CCW angle of
    # atan2(b, a) from it, so b = -sin.
    values = [cos << 16, (-sin) << 16, 0, sin << 16, cos << 16, 0, 0, 0, 1 << 30]
    data[matrix:matrix + 36] = struct.pack(">9i", *values)
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------------------
# The generated files.

def _frames_for(name: str, seconds: float, fps: int) -> np.ndarray:
    _, facts = GENERATED[name]
    return moving_frames(round(seconds * fps), facts.width, facts.height, seed=len(name))


def _long_mkv(path):  # Matroska, H.264 + Opus (48 kHz mono)
    return write_av(path, "matroska", "libx264", _frames_for(path.name, 10.4, 25), 25, "libopus",
                    tone(10.4, 48000), 48000)


def _fits_mp4(path):  # mp4, H.264 + AAC; larger than 300 px on one side
    write_video(path, _frames_for(path.name, 2.0, 24), 24, tone(2.0, 44100, 2, 660), 44100, crf=28)


def _longer_avi(path):  # AVI, MPEG-4 Part 2 + MP3 (44.1 kHz stereo)
    return write_av(path, "avi", "mpeg4", _frames_for(path.name, 6.6, 25), 25, "libmp3lame",
                    tone(6.6, 44100, 2, 330), 44100)


def _short_webm(path):  # WebM, VP8 + Vorbis: one second, shorter than most chunkings
    return write_av(path, "webm", "libvpx", _frames_for(path.name, 1.0, 24), 24, "vorbis",
                    tone(1.0, 44100, 2, 550), 44100)


def _no_duration_webm(path):  # WebM, VP9 + Opus, written as a live stream: no duration, no index
    return write_av(path, "webm", "libvpx-vp9", _frames_for(path.name, 4.9, 15)[:74], 15, "libopus",
                    np.zeros((2, round(4.9 * 48000)), np.float32), 48000, container_options={"live": "1"})


def _one_pixel_mp4(path):  # H.264 1x1 (4:4:4: 4:2:0 cannot halve one pixel), 1 fps, 5 frames, no audio
    return write_av(path, "mp4", "libx264", _frames_for(path.name, 5.0, 1), 1, pix_fmt="yuv444p")


def _no_audio_mp4(path):  # mp4, H.264 without an audio stream
    write_video(path, _frames_for(path.name, 1.08, 25), 25)


def _three_frames_mov(path):  # QuickTime, H.264, three frames at 30 fps (0.1 s), no audio
    return write_av(path, "mov", "libx264", _frames_for(path.name, 0.1, 30), 30)


def _rotated_mp4(path):  # a phone video held upright: stored landscape, shown turned a quarter clockwise
    frames = _frames_for(path.name, 2.0, 25)
    frames[:, :, : frames.shape[2] // 2] = 255  # left half white: on screen, the top half
    write_video(path, frames, 25, tone(2.0, 16000), 16000)
    set_mp4_rotation(path, -90)


def _vfr_mp4(path):  # variable frame rate: frame k shows the grey level 16 * k
    frames = np.stack([np.full((48, 64, 3), 16 * k, np.uint8) for k in range(len(VFR_TIMES))])
    write_video(path, frames, 10, tone(4.4, 16000), 16000, frame_times=VFR_TIMES)


GENERATORS = {"long.mkv": _long_mkv, "fits.mp4": _fits_mp4, "longer.avi": _longer_avi, "short.webm": _short_webm,
              "no_duration.webm": _no_duration_webm, "one_pixel.mp4": _one_pixel_mp4,
              "no_audio.mp4": _no_audio_mp4, "three_frames.mov": _three_frames_mov, "rotated.mp4": _rotated_mp4,
              "vfr.mp4": _vfr_mp4}


def write_sparse_keyframes(path: Path, seconds: float = 6.0, fps: int = 25, keyframe_every: float | None = None) -> Path:
    """H.264 + AAC (16 kHz mono) with a keyframe every `keyframe_every` seconds (default: a single
    one, at the start), in the container the suffix names: MPEG-TS (.ts: no index, so a seek lands
    on frames that cannot be decoded until the next keyframe) or mp4."""
    fmt = {".ts": "mpegts", ".mp4": "mp4"}[path.suffix]
    gop = round((keyframe_every or seconds) * fps) + (0 if keyframe_every else 1)
    return write_av(path, fmt, "libx264", moving_frames(round(seconds * fps), 96, 64, seed=3), fps, "aac",
                    tone(seconds, 16000), 16000, gop=gop)


def _audio_only(path):  # AAC in an mp4 container, no video stream
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for frame in _audio_frames(stream, tone(0.64, 16000), 16000):
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def _truncated(path):
    """Two seconds of noise with its index first ("faststart"), cut in half: the header promises
    more than the file holds."""
    rng = np.random.default_rng(0)
    whole, faststart = path.with_name("whole.mp4"), path.with_name("faststart.mp4")
    write_video(whole, rng.integers(0, 256, (50, 48, 64, 3), dtype=np.uint8), 25,
                0.1 * rng.standard_normal(2 * 16000).astype(np.float32), 16000)
    with av.open(str(whole)) as source, av.open(str(faststart), "w", options={"movflags": "faststart"}) as out:
        streams = {s: out.add_stream_from_template(s) for s in source.streams}
        for packet in source.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream]
                out.mux(packet)
    data = faststart.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    whole.unlink()
    faststart.unlink()


# ------------------------------------------------------------------------------------------------
# Sources.

@dataclass(frozen=True)
class MediaFile:
    path: Path
    role: str | None
    facts: Facts
    source: str  # "generated" or "real"

    @property
    def name(self) -> str:
        return self.path.name


class MediaSet:
    """The files of one source: by role (`path("long")`) or all of them (`files()`)."""

    def __init__(self, source: str, folder: Path, table: dict, broken: dict[str, Path] | None = None):
        self.source, self.folder = source, folder
        self.broken = broken or {}  # name -> path of the files that must fail (generated only)
        self.by_name = {name: MediaFile(folder / name, role, facts, source) for name, (role, facts) in table.items()}
        self.by_role = {f.role: f for f in self.by_name.values() if f.role}
        if set(self.by_role) != set(ROLES):
            raise ValueError(f"{source} media: roles {sorted(self.by_role)}, expected {sorted(ROLES)}")

    def file(self, role: str) -> MediaFile:
        return self.by_role[role]

    def path(self, role: str) -> Path:
        return self.by_role[role].path

    def path_of(self, name: str) -> Path:
        return self.by_name[name].path

    def facts(self, role: str) -> Facts:
        return self.by_role[role].facts

    def files(self) -> list[MediaFile]:
        return [self.by_name[n] for n in sorted(self.by_name)]

    def __repr__(self) -> str:
        return f"MediaSet({self.source}, {self.folder})"


def generate(root: Path) -> MediaSet:
    """Write every generated file under root/media (good files) and root/broken (failing ones)."""
    good, broken = root / "media", root / "broken"
    good.mkdir(parents=True, exist_ok=True)
    broken.mkdir(exist_ok=True)
    for name, write in GENERATORS.items():
        write(good / name)
    _audio_only(broken / "audio_only.m4a")
    _truncated(broken / "truncated.mp4")
    return MediaSet("generated", good, GENERATED, {name: broken / name for name in BROKEN})


def samples_dir() -> Path | None:
    """The real samples folder named by MIRASOL_SAMPLES (holding media/ and annotations/), or None."""
    value = os.environ.get(SAMPLES_ENV)
    if not value:
        return None
    folder = Path(value)
    if not (folder / "media").is_dir() or not (folder / "annotations").is_dir():
        raise RuntimeError(f"{SAMPLES_ENV}={value}: expected a folder holding media/ and annotations/ "
                           "(the real sample files); unset it to run on generated media only")
    return folder


def real_media() -> MediaSet | None:
    folder = samples_dir()
    if folder is None:
        return None
    present = {name: entry for name, entry in REAL.items() if (folder / "media" / name).exists()}
    missing = sorted(set(REAL) - set(present))
    if missing:
        raise RuntimeError(f"{SAMPLES_ENV}: {folder / 'media'} lacks {', '.join(missing)}")
    return MediaSet("real", folder / "media", REAL)


def sources() -> list[str]:
    """The sources the media tests run on: generated always, real where MIRASOL_SAMPLES is set."""
    return ["generated"] + (["real"] if samples_dir() is not None else [])
