"""Lazy chunk decoding (mirasol.media.chunk_reader.iter_chunks): a video of any length, one chunk at a
time, giving the frames and audio features of one whole-file load_clip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mirasol.media import MediaError, load_clip
from mirasol.media import chunk_reader as stream_module
from mirasol.media.chunk_reader import iter_chunks
from mirasol.media.decode import decode_media
from mirasol.media.writer import write_video

from conftest import tiny
from media_fixtures import write_sparse_keyframes


def assert_matches_whole(path, cfg, chunks, audio_exact=True):
    whole = load_clip(path, cfg.replace(num_chunks=len(chunks)))
    assert len(chunks) == whole.valid_chunks  # as many chunks as hold real content
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert c.video.shape == (cfg.frames_per_chunk, 3, cfg.image_size, cfg.image_size)
        assert c.audio.shape == (cfg.n_mels, cfg.audio_frames_per_chunk)
        assert c.start == pytest.approx(c.index * cfg.chunk_seconds)
    assert torch.equal(torch.cat([c.video for c in chunks]), whole.video)
    diff = (torch.cat([c.audio for c in chunks], dim=1) - whole.audio).abs()
    assert diff.mean() < 0.02
    assert bool(diff.max() <= 1e-4) == audio_exact, f"largest audio difference {float(diff.max()):.2g}"
    assert sum(c.valid_seconds for c in chunks) == pytest.approx(whole.valid_seconds, abs=0.05)


def test_every_container_and_codec_chunk_by_chunk_equals_whole_decode(media_file):
    """Where decoding after a seek lands a few audio samples off (media_fixtures.Facts), the chunks'
    audio is close to the whole decode's, not equal."""
    cfg = tiny()
    chunks = list(iter_chunks(media_file.path, cfg))
    assert chunks and all(0 < c.valid_seconds <= cfg.chunk_seconds for c in chunks)
    assert_matches_whole(media_file.path, cfg, chunks, audio_exact=media_file.facts.seek_exact_audio)


@pytest.fixture(scope="module")
def long_file(tmp_path_factory):
    """A 45 s file: frame k is a flat grey of level 4 * (k mod 64), audio a tone whose pitch rises."""
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    fps, seconds, rate = 8, 45, 16000
    frames = (np.full((32, 32, 3), 4 * (k % 64), np.uint8) for k in range(fps * seconds))
    t = np.arange(seconds * rate) / rate
    audio = (0.3 * np.sin(2 * np.pi * (200 + 20 * t) * t)).astype(np.float32)
    write_video(path, frames, fps, audio, rate)
    return path


def test_long_file_is_decoded_one_chunk_at_a_time(long_file, monkeypatch):
    cfg = tiny()
    calls = []
    original = stream_module.decode_media
    monkeypatch.setattr(stream_module, "decode_media",
                        lambda path, c, start, end: calls.append((c.num_chunks, start)) or original(path, c, start, end))
    it = iter_chunks(long_file, cfg)
    first = next(it)
    assert first.index == 0 and len(calls) == 2  # lazily: this chunk and the next (read ahead for audio)
    chunks = [first, *it]
    assert len(chunks) == 45
    assert all(n == 1 for n, _ in calls)  # every decode covers one chunk
    assert [s for _, s in calls][:45] == pytest.approx([t * cfg.chunk_seconds for t in range(45)])
    assert_matches_whole(long_file, cfg, chunks)


def test_range_and_max_chunks(long_file):
    cfg = tiny()
    chunks = list(iter_chunks(long_file, cfg, start=10.0, end=14.5))
    assert [c.start for c in chunks] == pytest.approx([10.0, 11.0, 12.0, 13.0, 14.0])
    assert chunks[-1].valid_seconds == pytest.approx(0.5, abs=0.05)
    clip = load_clip(long_file, cfg.replace(num_chunks=5), start=10.0, end=14.5)
    assert torch.equal(torch.cat([c.video for c in chunks]), clip.video)
    assert len(list(iter_chunks(long_file, cfg, max_chunks=3))) == 3


def test_bad_range_and_missing_file(tmp_path, long_file):
    with pytest.raises(MediaError, match="invalid range"):
        next(iter_chunks(long_file, tiny(), start=5.0, end=4.0))
    with pytest.raises(MediaError, match="nope.mp4"):
        next(iter_chunks(tmp_path / "nope.mp4", tiny()))


@pytest.fixture(scope="module", params=["ts", "mp4", "ts_every_2s"])
def sparse_keyframes(request, tmp_path_factory):
    """6 s with one keyframe, or one every 2 s: MPEG-TS has no index (a seek finds nothing decodable
    until the next keyframe), mp4 has one."""
    suffix, _, every = request.param.partition("_every_")
    path = tmp_path_factory.mktemp("sparse") / f"keys.{suffix}"
    return write_sparse_keyframes(path, keyframe_every=float(every[:-1]) if every else None)


def test_sparse_keyframes_any_chunk_equals_the_whole_decode(sparse_keyframes):
    cfg = tiny()
    assert_matches_whole(sparse_keyframes, cfg, list(iter_chunks(sparse_keyframes, cfg)))
    whole = load_clip(sparse_keyframes, cfg.replace(num_chunks=6))
    f, a = cfg.frames_per_chunk, cfg.audio_frames_per_chunk
    for t in (2, 4, 5):  # what `ask --at t` streams first
        chunk = next(iter_chunks(sparse_keyframes, cfg, start=float(t)))
        assert chunk.start == pytest.approx(t)
        assert torch.equal(chunk.video, whole.video[t * f:(t + 1) * f])
        edge = 3  # the first audio frames read before `start`, which a stream from there takes as silence
        assert (chunk.audio - whole.audio[:, t * a:(t + 1) * a])[:, edge:].abs().max() <= 1e-4
    late = decode_media(sparse_keyframes, cfg.replace(num_chunks=1), start=5.0)
    assert late.seek_fallback == (sparse_keyframes.suffix == ".ts")  # mp4's index finds the keyframe


def test_a_file_that_cannot_seek_is_read_once(tmp_path, monkeypatch):
    """30 s of MPEG-TS with a single keyframe: no seek finds a decodable frame, so chunk by chunk
    every chunk would be decoded from the start of the file. After the first such fallback the rest
    is read forward in one pass: two calls of decode_media instead of 30, and the chunks are still
    the whole decode's, also from a later start."""
    path = write_sparse_keyframes(tmp_path / "one_keyframe.ts", seconds=30.0)
    cfg = tiny()
    calls = []

    def counted(*args, **kwargs):
        calls.append(args[2] if len(args) > 2 else kwargs.get("start"))
        return decode_media(*args, **kwargs)

    monkeypatch.setattr(stream_module, "decode_media", counted)
    chunks = list(iter_chunks(path, cfg))
    assert len(chunks) == 30 / cfg.chunk_seconds and len(calls) == 2
    assert_matches_whole(path, cfg, chunks)
    whole = load_clip(path, cfg.replace(num_chunks=len(chunks)))
    f, a = cfg.frames_per_chunk, cfg.audio_frames_per_chunk
    t0 = round(20 / cfg.chunk_seconds)
    later = list(iter_chunks(path, cfg, start=t0 * cfg.chunk_seconds, max_chunks=3))
    assert [c.index for c in later] == [0, 1, 2]
    assert [c.start for c in later] == pytest.approx([(t0 + i) * cfg.chunk_seconds for i in range(3)])
    assert torch.equal(torch.cat([c.video for c in later]), whole.video[t0 * f:(t0 + 3) * f])
    assert (torch.cat([c.audio for c in later], dim=1) - whole.audio[:, t0 * a:(t0 + 3) * a]).abs().max() <= 1e-4
    assert all(c.duration == chunks[0].duration for c in later)


def test_sparse_keyframes_uniform_samples_the_same_frames(sparse_keyframes):
    """'uniform' over 6 s in 2 chunks of 2 frames samples 0.75, 2.25, 3.75 and 5.25 s, far enough
    apart to seek between them: the frames a 'start' decode at 2 fps shows at those times."""
    spread = load_clip(sparse_keyframes, tiny(num_chunks=2, clip_window="uniform"), end=6.0)
    start = load_clip(sparse_keyframes, tiny(num_chunks=6), end=6.0)  # (i + 0.5) / 2 s
    assert spread.end == 6.0 and spread.video.shape[0] == 4
    assert torch.equal(spread.video, start.video[[1, 4, 7, 10]])


def test_chunks_carry_the_audio_features_the_config_asks_for(long_file):
    """A Whisper audio backbone's features (audio_features='whisper'): streamed chunk by chunk, read
    live, and decoded whole, they are the same; and they are not the default log-mel. Compared as
    the backbone sees them, floored at the chunk's maximum - 8 (raw log10 of near-silent bands
    magnifies rounding)."""
    from mirasol.media.live import live_chunks

    def seen(audio):
        return audio.clamp(min=float(audio.max()) - 8.0)

    cfg = tiny(n_mels=80, audio_features="whisper")
    chunks = list(iter_chunks(long_file, cfg))
    whole = load_clip(long_file, cfg.replace(num_chunks=len(chunks)))
    live = [c.chunk for c in live_chunks(str(long_file), cfg, follow=False)]
    assert len(chunks) == len(live) == 45
    a = cfg.audio_frames_per_chunk
    for t, (ours, theirs) in enumerate(zip(chunks, live)):
        assert ours.audio.shape == (80, a)
        assert (seen(ours.audio) - seen(whole.audio[:, t * a:(t + 1) * a])).abs().max() <= 1e-2
        assert (seen(ours.audio) - seen(theirs.audio)).abs().max() <= 1e-2
    default = next(iter_chunks(long_file, cfg.replace(audio_features="log_mel")))
    assert (default.audio - chunks[0].audio).abs().max() > 1.0
