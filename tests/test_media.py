"""Media pipeline: decoding by timestamp, audio/video chunk alignment, log-mel, errors, memory."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from mirasol import MirasolConfig
from mirasol.media import Clip, MediaError, NoAudioError, load_clip
from mirasol.media import decode as decode_module
from mirasol.media.clip import count_valid_chunks
from mirasol.media.decode import plan_window
from mirasol.media.features import LOG_MEL_SCALE, SILENCE, fft_size, log_mel, mel_band_centres, mel_filterbank
from mirasol.media.writer import write_video

from conftest import tiny
from media_fixtures import BROKEN, VFR_TIMES

DARK, BRIGHT = 16, 235


def flash_and_beep(path, src_fps, sample_rate, seconds, flash, size=(48, 64), with_audio=True, codec=None,
                  gop=None):
    """Dark screen and silence, except a bright screen and a 1 kHz beep during [flash[0], flash[1])."""
    t0, t1 = flash
    n = round(seconds * src_fps)
    times = np.arange(n) / src_fps
    frames = np.full((n, *size, 3), DARK, np.uint8)
    frames[(times >= t0 - 1e-9) & (times < t1 - 1e-9)] = BRIGHT
    audio = None
    if with_audio:
        t = np.arange(round(seconds * sample_rate)) / sample_rate
        audio = np.where((t >= t0) & (t < t1), 0.5 * np.sin(2 * np.pi * 1000 * t), 0).astype(np.float32)
    write_video(path, frames, src_fps, audio, sample_rate, codec=codec, gop=gop)
    return path


def bright_frames(clip: Clip) -> set[int]:
    return {i for i, v in enumerate(clip.video.mean(dim=(1, 2, 3)).tolist()) if v > 0.5}


def check_alignment(clip: Clip, cfg: MirasolConfig, flash, chunk: int) -> None:
    """The flash's frames and the beep's audio frames are exactly those of chunk `chunk`."""
    t0, t1 = (t - clip.start for t in flash)
    f, a = cfg.frames_per_chunk, cfg.audio_frames_per_chunk
    assert bright_frames(clip) == set(range(chunk * f, (chunk + 1) * f))

    loudness = clip.audio.max(dim=0).values  # [audio_frames]
    hop, half_win = cfg.audio_hop_ms / 1000, cfg.audio_win_ms / 2000
    centres = [j * hop for j in range(len(loudness))]
    within = [v for c, v in zip(centres, loudness.tolist()) if t0 + half_win <= c <= t1 - half_win]
    outside = [v for c, v in zip(centres, loudness.tolist()) if c + half_win <= t0 or c - half_win >= t1]
    assert within and min(within) > 2.5  # windows entirely inside the beep
    assert outside and max(outside) < SILENCE + 0.1  # windows entirely outside it
    per_chunk = clip.audio.reshape(cfg.n_mels, cfg.num_chunks, a).mean(dim=(0, 2))
    assert int(per_chunk.argmax()) == chunk
    fully_loud = {j // a for j, v in enumerate(loudness.tolist()) if v > 2.5}
    assert chunk in fully_loud and fully_loud <= {chunk - 1, chunk, chunk + 1}
    # ...and the frames centred inside the beep all belong to the chunk.
    inside = [j for j in range(len(loudness)) if t0 < j * hop < t1]
    assert {j // a for j in inside} == {chunk}


# ---------------------------------------------------------------------------------------------
# Alignment: a flash and a beep at the same time land in the same chunk.

ALIGNMENT_CASES = [
    # source fps, sample rate, config (chunk length), flash interval, expected chunk, codec
    (24, 44100, dict(), (2.0, 3.0), 2, None),  # tiny: 4 chunks x 2 frames at 2 fps = 1 s chunks
    (25, 22050, dict(num_chunks=8, frames_per_chunk=2, fps=5.0), (1.2, 1.6), 3, None),  # 0.4 s chunks
    (30, 48000, dict(num_chunks=6, frames_per_chunk=4, fps=8.0), (1.5, 2.0), 3, None),  # 0.5 s chunks
    (29.97, 44100, dict(num_chunks=5, frames_per_chunk=2, fps=2.5), (2.4, 3.2), 3, None),  # 0.8 s chunks
    (24, 48000, dict(num_chunks=8, frames_per_chunk=4, fps=8.0), (0.0, 0.5), 0, None),  # first chunk
    (30, 22050, dict(num_chunks=4, frames_per_chunk=4, fps=4.0), (3.0, 4.0), 3, None),  # last chunk
    (25, 48000, dict(), (1.0, 2.0), 1, "mpeg4"),  # the writer's fallback codec
]


@pytest.mark.parametrize("src_fps,sample_rate,overrides,flash,chunk,codec", ALIGNMENT_CASES)
def test_flash_and_beep_land_in_the_same_chunk(tmp_path, src_fps, sample_rate, overrides, flash, chunk, codec):
    cfg = tiny(**overrides)
    path = flash_and_beep(tmp_path / "fb.mp4", src_fps, sample_rate, cfg.clip_seconds + 0.5, flash, codec=codec)
    clip = load_clip(path, cfg)
    assert clip.video.shape == (cfg.num_frames, 3, cfg.image_size, cfg.image_size)
    assert clip.audio.shape == (cfg.n_mels, cfg.audio_frames)
    assert clip.has_audio and clip.start == 0.0 and clip.valid_chunks == cfg.num_chunks
    check_alignment(clip, cfg, flash, chunk)


def test_window_start_seeks_and_keeps_alignment(tmp_path):
    cfg = tiny()  # 1 s chunks, 4 s clip
    path = flash_and_beep(tmp_path / "fb.mp4", 25, 44100, 10.0, (5.0, 6.0))
    clip = load_clip(path, cfg, start=4.0)
    assert clip.start == 4.0 and clip.valid_seconds == 4.0
    check_alignment(clip, cfg, (5.0, 6.0), chunk=1)


def test_clip_window_center_takes_the_middle(tmp_path):
    cfg = tiny(clip_window="center")
    path = flash_and_beep(tmp_path / "fb.mp4", 30, 48000, 10.0, (5.0, 6.0))
    clip = load_clip(path, cfg)  # 10 s file, 4 s clip: [3, 7)
    assert clip.start == pytest.approx(3.0, abs=0.02)
    check_alignment(clip, cfg, (5.0, 6.0), chunk=2)
    inner = load_clip(path, cfg, start=2.0, end=9.0)  # the middle 4 s of [2, 9): [3.5, 7.5)
    assert inner.start == pytest.approx(3.5)


# ---------------------------------------------------------------------------------------------
# clip_window='uniform': T chunks spread over a long file, each chunk's video and audio from one span.

def check_uniform_alignment(clip: Clip, cfg: MirasolConfig, chunk: int) -> None:
    """Only chunk `chunk` shows the flash (all its frames) and holds the beep (all its audio)."""
    f, a = cfg.frames_per_chunk, cfg.audio_frames_per_chunk
    assert bright_frames(clip) == set(range(chunk * f, (chunk + 1) * f))
    loud = clip.audio.max(dim=0).values.reshape(cfg.num_chunks, a)  # [T, a]
    edge = round(cfg.audio_win_ms / cfg.audio_hop_ms)  # frames whose window may reach past the chunk
    assert bool((loud[chunk, edge:-edge] > 2.5).all()), loud[chunk]
    others = [t for t in range(cfg.num_chunks) if t != chunk]
    assert bool((loud[others] < SILENCE + 0.1).all()), loud[others]


@pytest.fixture(scope="module")
def three_minutes(tmp_path_factory):
    """A 3-minute file (10 fps, a keyframe every 2 s) with a flash + beep during [100, 125) s."""
    path = tmp_path_factory.mktemp("long") / "three_minutes.mp4"
    return flash_and_beep(path, 10, 16000, 180.0, (100.0, 125.0), gop=20)


def test_uniform_spreads_chunks_over_a_long_file(three_minutes):
    cfg = tiny(clip_window="uniform")  # 4 chunks x 2 frames, 1 s of audio per chunk
    clip = load_clip(three_minutes, cfg)
    # 4 spans of 45 s: chunk 2 is [90, 135); its frames at 101.25 and 123.75 s, its audio [112, 113) s.
    assert clip.start == 0.0 and clip.end == pytest.approx(180.0, abs=0.1)
    assert clip.valid_chunks == cfg.num_chunks and clip.has_audio
    assert clip.video.shape == (cfg.num_frames, 3, cfg.image_size, cfg.image_size)
    assert clip.audio.shape == (cfg.n_mels, cfg.audio_frames)
    check_uniform_alignment(clip, cfg, chunk=2)


def test_uniform_spans_the_rows_start_and_end(three_minutes):
    cfg = tiny(clip_window="uniform", num_chunks=5, frames_per_chunk=4, fps=4.0)
    clip = load_clip(three_minutes, cfg, start=50.0, end=150.0)  # 5 spans of 20 s; chunk 2 is [90, 110)
    assert clip.start == 50.0 and clip.end == pytest.approx(150.0)
    # frames of chunk 2 at 92.5, 97.5, 102.5, 107.5 s and of chunk 3 at 112.5 ... 127.5 s
    assert bright_frames(clip) == {10, 11, 12, 13, 14}
    clip = load_clip(three_minutes, cfg, start=52.0, end=172.0)  # spans of 24 s: chunk 2 is [100, 124)
    check_uniform_alignment(clip, cfg, chunk=2)


@pytest.mark.parametrize("seconds", [3.0, 4.0])
def test_uniform_is_start_when_the_file_fits_one_clip(tmp_path, seconds):
    path = flash_and_beep(tmp_path / "fb.mp4", 25, 44100, seconds, (2.0, 3.0))
    uniform, start = load_clip(path, tiny(clip_window="uniform")), load_clip(path, tiny())
    assert torch.equal(uniform.video, start.video) and torch.equal(uniform.audio, start.audio)
    assert uniform.valid_chunks == start.valid_chunks == seconds


def test_uniform_seeks_instead_of_decoding_the_whole_file(three_minutes, monkeypatch):
    decoded = []
    push = decode_module._FrameSampler.push
    monkeypatch.setattr(decode_module._FrameSampler, "push",
                        lambda self, frame, time, duration: (decoded.append(time), push(self, frame, time, duration)))
    load_clip(three_minutes, tiny(clip_window="uniform"))
    assert len(decoded) < 0.15 * 1800, len(decoded)  # 8 samples, each at most a keyframe interval away
    assert max(decoded) > 150  # ... spread over the whole file


def test_short_window_is_padded_and_recorded(tmp_path):
    cfg = tiny()
    path = flash_and_beep(tmp_path / "fb.mp4", 25, 44100, 10.0, (5.0, 6.0))
    clip = load_clip(path, cfg, start=4.0, end=6.0)  # 2 s of a 4 s clip
    assert clip.valid_seconds == pytest.approx(2.0) and clip.valid_chunks == 2
    assert bright_frames(clip) == {2, 3, 4, 5, 6, 7}  # chunk 1 is the flash; padding repeats its last frame
    assert torch.equal(clip.video[4], clip.video[3]) and torch.equal(clip.video[7], clip.video[3])
    a = cfg.audio_frames_per_chunk
    assert torch.all(clip.audio[:, 2 * a + 2:] == SILENCE)  # audio after `end` is zeros, not the file


def test_file_shorter_than_clip(tmp_path):
    cfg = tiny(num_chunks=4, frames_per_chunk=2, fps=2.0)
    path = flash_and_beep(tmp_path / "short.mp4", 25, 16000, 1.5, (1.0, 1.5))
    clip = load_clip(path, cfg)
    assert clip.valid_seconds == pytest.approx(1.5, abs=0.07) and clip.valid_chunks == 2
    # frames 0 (0.25 s) and 1 (0.75 s) dark, 2 (1.25 s) bright, then the last frame is held
    assert bright_frames(clip) == set(range(2, 8))


# ---------------------------------------------------------------------------------------------
# Frames are chosen by timestamp: every frame shows its own index as a grey level.

def index_frames(count, size=(32, 48)):
    """Frame k is a flat grey of level 8 * (k mod 32): neighbouring frames are easy to tell apart."""
    return [np.full((*size, 3), 8 * (k % 32), np.uint8) for k in range(count)]


def shown_indices(clip: Clip) -> list[int]:
    return [round(v * 255 / 8) % 32 for v in clip.video.mean(dim=(1, 2, 3)).tolist()]


def expected_indices(times, targets) -> list[int]:
    """Index (mod 32) of the latest frame with time <= target, or the first frame."""
    return [max([k for k, t in enumerate(times) if t <= target] or [0]) % 32 for target in targets]


@pytest.mark.parametrize("src_fps", [24, 25, 29.97])
@pytest.mark.parametrize("start", [None, 1.3])
def test_constant_frame_rate_picks_latest_frame_by_pts(tmp_path, src_fps, start):
    cfg = tiny(num_chunks=5, frames_per_chunk=2, fps=10.0)  # samples at (i + 0.5) / 10 s
    n = 75
    write_video(tmp_path / "cfr.mp4", index_frames(n), src_fps)
    clip = load_clip(tmp_path / "cfr.mp4", cfg, start=start)
    ws = start or 0.0
    times = [k / (30000 / 1001 if src_fps == 29.97 else src_fps) for k in range(n)]
    assert shown_indices(clip) == expected_indices(times, [ws + (i + 0.5) / cfg.fps for i in range(cfg.num_frames)])


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_variable_frame_rate_uses_timestamps_not_indices(tmp_path, codec):
    times = [0.0, 0.1, 0.2, 0.3, 1.0, 1.05, 1.1, 1.9, 2.6, 2.7, 2.8, 2.9, 3.5, 3.9, 4.3]
    write_video(tmp_path / "vfr.mp4", index_frames(len(times)), 10, frame_times=times, codec=codec)
    cfg = tiny()  # samples at 0.25, 0.75, ..., 3.75 s
    clip = load_clip(tmp_path / "vfr.mp4", cfg)
    targets = [(i + 0.5) / cfg.fps for i in range(cfg.num_frames)]
    assert shown_indices(clip) == expected_indices(times, targets) == [2, 3, 6, 6, 7, 9, 11, 12]
    late = load_clip(tmp_path / "vfr.mp4", cfg, start=0.5)
    assert shown_indices(late) == expected_indices(times, [0.5 + t for t in targets])


def test_only_sampled_frames_are_converted(tmp_path, monkeypatch):
    write_video(tmp_path / "v.mp4", index_frames(120), 30)  # 4 s at 30 fps, 8 samples
    calls = []
    original = decode_module._square_image
    monkeypatch.setattr(decode_module, "_square_image", lambda *a: calls.append(1) or original(*a))
    load_clip(tmp_path / "v.mp4", tiny())
    assert len(calls) == 8


# ---------------------------------------------------------------------------------------------
# Files of every container and codec the decoder promises (generated; the real samples too where
# MIRASOL_SAMPLES is set): shapes, ranges, audio and length as each file's facts say.

@pytest.mark.parametrize("cfg", [tiny(), MirasolConfig.preset("small", resize="letterbox", clip_window="center"),
                                 tiny(clip_window="uniform")],
                         ids=["tiny-crop-start", "small-letterbox-center", "tiny-crop-uniform"])
def test_every_container_and_codec_decodes(media_file, cfg):
    facts = media_file.facts
    clip = load_clip(media_file.path, cfg)
    S = cfg.image_size
    assert clip.video.shape == (cfg.num_frames, 3, S, S) and clip.video.dtype == torch.float32
    assert clip.audio.shape == (cfg.n_mels, cfg.audio_frames) and clip.audio.dtype == torch.float32
    assert 0.0 <= clip.video.min() and clip.video.max() <= 1.0 and clip.video.max() > 0
    assert torch.isfinite(clip.audio).all() and clip.audio.min() >= SILENCE - 1e-4
    assert clip.has_audio == facts.has_audio and (clip.audio_seconds > 0) == facts.has_audio
    # a stream of digital silence decodes to the silence level, like no stream at all
    assert bool(clip.audio.max() > SILENCE + 1) == (facts.has_audio and facts.audible)
    assert (clip.duration is not None) == facts.has_duration
    assert clip.valid_seconds == pytest.approx(min(facts.seconds, cfg.clip_seconds), abs=0.1)
    assert clip.valid_chunks == count_valid_chunks(clip.valid_seconds, cfg)


def test_without_a_container_duration_center_falls_back_to_start(media):
    clip = load_clip(media.path("no_duration"), tiny(clip_window="center"))
    assert clip.duration is None and clip.start == 0.0 and clip.valid_seconds == pytest.approx(4.0)


@pytest.mark.parametrize("policy", ["skip", "error"])
def test_file_without_audio_raises_for_skip_and_error(media, policy):
    path = media.path("no_audio")
    with pytest.raises(NoAudioError, match=path.name):
        load_clip(path, tiny(missing_audio=policy))


def test_a_phone_video_is_shown_upright(generated_media):
    """The file stores a landscape picture (left half white) and a display rotation of -90 degrees
    in its track header: shown turned a quarter clockwise, the white half is on top."""
    path = generated_media.path_of("rotated.mp4")
    image = load_clip(path, tiny(resize="crop", image_size=32)).video[0].mean(dim=0)  # [S, S]
    assert image[:16].mean() > 0.9 and image[16:].mean() < 0.9
    assert image[:16].mean() - image[16:].mean() > 0.3


def test_variable_frame_rate_file_is_sampled_by_time(generated_media):
    clip = load_clip(generated_media.path_of("vfr.mp4"), tiny())  # frame k is grey 16 * k
    levels = [round(v * 255 / 16) for v in clip.video.mean(dim=(1, 2, 3)).tolist()]
    targets = [(i + 0.5) / tiny().fps for i in range(tiny().num_frames)]
    assert levels == expected_indices(VFR_TIMES, targets)


# ---------------------------------------------------------------------------------------------
# Errors name the file; nothing hangs.

@pytest.fixture()
def real_mp4(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (50, 48, 64, 3), dtype=np.uint8)
    audio = 0.1 * np.random.default_rng(1).standard_normal(2 * 16000).astype(np.float32)
    write_video(tmp_path / "real.mp4", frames, 25, audio, 16000)
    return tmp_path / "real.mp4"


def test_broken_files_raise_media_error_naming_the_path(tmp_path, real_mp4):
    data = real_mp4.read_bytes()
    cases = {
        "empty.mp4": b"",
        "truncated.mp4": data[: int(len(data) * 0.3)],
        "notes.mp4": b"this is a text file, not a video\n" * 50,
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    cases["missing.mp4"] = None
    for name in cases:
        with pytest.raises(MediaError) as caught:
            load_clip(tmp_path / name, tiny())
        assert str(tmp_path / name) in str(caught.value) and caught.value.path == str(tmp_path / name)
    with pytest.raises(MediaError, match="directory"):
        load_clip(tmp_path, tiny())


def test_media_error_survives_pickling():
    error = pickle.loads(pickle.dumps(NoAudioError("/x/a.mp4", "no audio stream")))
    assert isinstance(error, NoAudioError) and error.path == "/x/a.mp4" and str(error) == "/x/a.mp4: no audio stream"
    assert str(MediaError("already formatted")) == "already formatted"  # how DataLoader workers re-raise


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_files_raise_their_reason(generated_media, name):
    path = generated_media.broken[name]
    with pytest.raises(MediaError, match=BROKEN[name]) as caught:
        load_clip(path, tiny())
    assert caught.value.path == str(path)


@pytest.mark.timeout(60)  # corrupt data must end in an error or a clip, never a hang
def test_corrupt_and_truncated_data_end(tmp_path, real_mp4, generated_media):
    cut = generated_media.broken["truncated.mp4"]  # index first, then cut: the header promises 2 s
    with pytest.raises(MediaError, match="truncated"):
        load_clip(cut, tiny())
    assert load_clip(cut, tiny(), end=0.5).valid_seconds == pytest.approx(0.5)  # before the cut

    garbled = bytearray(real_mp4.read_bytes())
    middle = slice(len(garbled) // 3, len(garbled) // 2)
    garbled[middle] = np.random.default_rng(2).integers(0, 256, middle.stop - middle.start, dtype=np.uint8).tobytes()
    (tmp_path / "garbled.mp4").write_bytes(bytes(garbled))
    with pytest.raises(MediaError, match="garbled.mp4: decoding failed"):
        load_clip(tmp_path / "garbled.mp4", tiny())


def test_invalid_window(real_mp4):
    with pytest.raises(MediaError, match="nothing to decode"):
        load_clip(real_mp4, tiny(), start=30.0)
    with pytest.raises(MediaError, match="invalid window"):
        load_clip(real_mp4, tiny(), start=1.0, end=0.5)


# ---------------------------------------------------------------------------------------------
# Policies and geometry.

def test_missing_audio_policies(tmp_path):
    path = flash_and_beep(tmp_path / "mute.mp4", 25, 16000, 4.0, (1.0, 2.0), with_audio=False)
    clip = load_clip(path, tiny(missing_audio="zeros"))
    assert not clip.has_audio and torch.all(clip.audio == SILENCE) and clip.valid_chunks == 4
    for policy in ("skip", "error"):
        with pytest.raises(NoAudioError, match="mute.mp4"):
            load_clip(path, tiny(missing_audio=policy))
    assert issubclass(NoAudioError, MediaError)


@pytest.mark.parametrize("width,height", [(96, 48), (48, 96)])
def test_crop_and_letterbox(tmp_path, width, height):
    frame = np.full((height, width, 3), 255, np.uint8)
    write_video(tmp_path / "white.mp4", [frame] * 10, 5)
    cropped = load_clip(tmp_path / "white.mp4", tiny(resize="crop"))
    boxed = load_clip(tmp_path / "white.mp4", tiny(resize="letterbox"))
    S = tiny().image_size
    assert cropped.video.shape == boxed.video.shape == (8, 3, S, S)
    assert cropped.video.min() > 0.9  # the picture fills the square
    image = boxed.video[0].mean(dim=0)  # [S, S]; the 2:1 picture fills half the square
    bars = image[: S // 4] if width > height else image[:, : S // 4]
    middle = image[S // 4 + 1: 3 * S // 4 - 1] if width > height else image[:, S // 4 + 1: 3 * S // 4 - 1]
    assert bars.max() < 0.05 and middle.min() > 0.9
    assert torch.allclose(image, image.flip(0), atol=0.02) and torch.allclose(image, image.flip(1), atol=0.02)


def test_display_rotation_is_applied():
    import av

    class Rotated:  # PyAV cannot write a display matrix; wrap a frame to report one
        def __init__(self, frame, rotation):
            self.frame, self.rotation, self.width, self.height = frame, rotation, frame.width, frame.height

        def reformat(self, **kwargs):
            return self.frame.reformat(**kwargs)

    image = np.zeros((32, 64, 3), np.uint8)
    image[:, :32] = 255  # left half white
    frame = av.VideoFrame.from_ndarray(image, format="rgb24")
    upright = decode_module._square_image(Rotated(frame, 0), 32, "letterbox", 1.0).mean(axis=-1)
    assert upright[:, :16].mean() > 100 and upright[:, 16:].mean() < 5
    # -90: shown turned a quarter clockwise (a phone held upright), so the left half ends on top
    turned = decode_module._square_image(Rotated(frame, -90), 32, "letterbox", 1.0).mean(axis=-1)
    assert turned[:16].mean() > 100 and turned[16:].mean() < 5


def test_media_writer_is_deterministic_and_atomic(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    frames = np.stack([np.roll(base, 3 * k, axis=1) for k in range(40)])
    audio = 0.1 * rng.standard_normal(32000).astype(np.float32)
    for name in ("a.mp4", "b.mp4"):
        write_video(tmp_path / name, frames, 25, audio, 16000)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", frames[:, :95], 25)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4"]  # no partial file left


def test_plan_window():
    cfg = tiny()  # 4 s clip
    assert plan_window(cfg, 10.0) == (0.0, 4.0)
    assert plan_window(cfg, 2.5) == (0.0, 4.0)  # the streams' real end decides what is real
    assert plan_window(cfg, 10.0, start=1.0, end=3.0) == (1.0, 3.0)
    assert plan_window(cfg, None, start=3.0) == (3.0, 7.0)
    center = tiny(clip_window="center")
    assert plan_window(center, 10.0) == (3.0, 7.0)
    assert plan_window(center, None) == (0.0, 4.0)  # no duration: falls back to 'start'
    assert plan_window(center, 10.0, start=1.0, end=3.0) == (1.0, 3.0)
    assert plan_window(center, 10.0, start=6.0, end=20.0) == (6.0, 10.0)  # end clamped to the file


def test_count_valid_chunks():
    cfg = tiny()  # 1 s chunks, 2 fps: first sample of a chunk is 0.25 s into it
    assert [count_valid_chunks(s, cfg) for s in (0, 0.01, 1.0, 1.02, 1.3, 4.0, 9.0)] == [0, 1, 1, 1, 2, 4, 4]


# ---------------------------------------------------------------------------------------------
# Log-mel features.

def test_log_mel_frame_counts_and_silence():
    cfg = tiny()
    samples = round(cfg.clip_seconds * cfg.sample_rate)
    assert log_mel(np.zeros(samples, np.float32), cfg).shape == (cfg.n_mels, cfg.audio_frames)
    silent = log_mel(np.zeros(samples, np.float32), cfg)
    assert torch.all(silent == torch.tensor(SILENCE, dtype=torch.float32))
    assert log_mel(np.zeros(samples + 37), cfg).shape[-1] == cfg.audio_frames  # partial hop: no frame
    assert log_mel(np.zeros(1000), cfg, num_frames=cfg.audio_frames).shape == (cfg.n_mels, cfg.audio_frames)
    assert log_mel(np.zeros((3, samples)), cfg).shape == (3, cfg.n_mels, cfg.audio_frames)
    assert fft_size(400) == 512 and fft_size(512) == 512 and fft_size(441) == 512


@pytest.mark.parametrize("n_mels", [32, 64, 128])
@pytest.mark.parametrize("band", [5, 12, 20, 28])
def test_pure_tone_peaks_at_its_mel_band(n_mels, band):
    cfg = tiny(n_mels=n_mels, audio_patch_mels=16)
    band = band * n_mels // 32
    freq = mel_band_centres(cfg.sample_rate, n_mels)[band]
    t = np.arange(cfg.sample_rate) / cfg.sample_rate
    spec = log_mel(0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32), cfg)
    assert int(spec[:, 10:-10].mean(dim=1).argmax()) == band


def test_filterbank_rows_are_normalised_and_never_empty():
    for n_mels in (32, 64, 128):
        bank = mel_filterbank(16000, 512, n_mels)
        assert bank.shape == (n_mels, 257) and torch.allclose(bank.sum(dim=1), torch.ones(n_mels))
    assert mel_filterbank(16000, 512, 64) is mel_filterbank(16000, 512, 64)  # cached


def test_log_mel_frame_j_is_centred_on_sample_j_times_hop():
    cfg = tiny()
    x = np.zeros(cfg.sample_rate, np.float32)
    energies = {}
    for j in (0, 37, 98):
        x[:] = 0
        x[j * cfg.hop_length] = 1.0  # a click
        energies[j] = log_mel(x, cfg).mean(dim=0)
        assert int(energies[j].argmax()) == j
    for j in (37, 98):  # the frames either side see it equally far from their centres
        assert torch.isclose(energies[j][j - 1], energies[j][j + 1])


def test_log_mel_keeps_loudness():
    cfg = tiny()
    noise = 0.1 * np.random.default_rng(0).standard_normal(cfg.sample_rate).astype(np.float32)
    quiet, loud = log_mel(noise, cfg), log_mel(2 * noise, cfg)  # twice the amplitude: 4x the power
    step = math.log(4) / LOG_MEL_SCALE
    assert abs(float((loud - quiet).median()) - step) < 1e-3
    assert torch.allclose(loud - quiet, torch.full_like(quiet, step), atol=0.02)  # but the 1e-6 floor


# ---------------------------------------------------------------------------------------------
# Memory does not grow with the length of the file.

MEMORY_PROBE = textwrap.dedent("""
    import json, resource, sys, tracemalloc
    from mirasol import MirasolConfig
    from mirasol.data import load_clip
    path = sys.argv[1]
    load_clip(path, MirasolConfig())                     # warm up: decoder, threads, imports
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # a 64 s clip (8 frames at 1/8 fps): decodes every frame of the 40 s file
    cfg = MirasolConfig(num_chunks=4, frames_per_chunk=2, fps=0.125)
    tracemalloc.start()
    clip = load_clip(path, cfg)
    peak = tracemalloc.get_traced_memory()[1]
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rss_growth_kb": after - before, "traced_peak": peak, "valid": clip.valid_seconds}))
""")


def test_memory_is_bounded_on_a_long_file(tmp_path):
    # 40 s of 640x360 at 10 fps: holding its decoded frames would take >= 138 MB (yuv420p).
    seconds, fps, (h, w) = 40, 10, (360, 640)
    bar = np.zeros((h, w, 3), np.uint8)

    def frames():
        for k in range(seconds * fps):
            bar[:] = 0
            bar[:, (k * 7) % w: (k * 7) % w + 16] = 255
            yield bar

    audio = 0.1 * np.sin(2 * np.pi * 440 * np.arange(seconds * 16000) / 16000).astype(np.float32)
    write_video(tmp_path / "long.mp4", frames(), fps, audio, 16000)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tmp_path / "long.mp4")], capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["valid"] == pytest.approx(seconds, abs=0.1)
    assert result["rss_growth_kb"] < 60_000, result  # far less than the decoded file
    assert result["traced_peak"] < 16_000_000, result  # python/numpy side: samples + 64 s of audio


def test_load_clip_is_still_importable_from_mirasol_data():
    # The user contract (docs/design.md) names `from mirasol.data import load_clip`; it lives in mirasol.media.
    from mirasol import data

    assert data.load_clip is load_clip and data.MediaError is MediaError
