"""The built-in audio-visual world (mirasol.corpora.synth): determinism, manifests, balance, media,
and an oracle that answers every question family from the decoded media alone at the `tiny`
preset's resolution (32x32 frames at 2 fps, 16 kHz mono audio)."""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")

from mirasol.corpora import synth  # noqa: E402

SPLITS = ("train", "val", "test")
QA_FAMILIES = [f for f, info in synth.FAMILIES.items() if info["task"] == "qa"]
ALL_FAMILIES = list(synth.FAMILIES)


def read_rows(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every manifest and clip, by relative path."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != "world.json":
            out[p.relative_to(folder).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "data"
    result = synth.synthesize(out, num=40, seed=0, progress=False)
    return out, result


# ------------------------------------------------------------------------------------------------
# determinism


def test_same_seed_same_dataset_whatever_the_workers(tmp_path):
    a = synth.synthesize(tmp_path / "a", num=10, seed=3, workers=2, progress=False)
    b = synth.synthesize(tmp_path / "b", num=10, seed=3, workers=1, progress=False)
    da, db = digest(Path(a["out"])), digest(Path(b["out"]))
    assert len(da) == 10 + 3
    assert da == db  # identical manifests and byte-identical mp4 files


def test_different_seed_different_dataset(tmp_path):
    assert synth.plan(50, 0) != synth.plan(50, 1)
    a = synth.synthesize(tmp_path / "a", num=6, seed=0, progress=False)
    b = synth.synthesize(tmp_path / "b", num=6, seed=1, progress=False)
    da, db = digest(Path(a["out"])), digest(Path(b["out"]))
    for split in SPLITS:
        assert da[f"{split}.jsonl"] != db[f"{split}.jsonl"]
    assert all(da[f"clips/c{i:05d}.mp4"] != db[f"clips/c{i:05d}.mp4"] for i in range(6))


def test_plan_is_deterministic_and_rendering_pure():
    specs = synth.plan(30, 11)
    assert specs == synth.plan(30, 11)
    spec = specs[5]
    assert np.array_equal(synth.render_frames(spec), synth.render_frames(spec))
    assert np.array_equal(synth.render_audio(spec), synth.render_audio(spec))


# ------------------------------------------------------------------------------------------------
# manifests


def test_manifests_valid(dataset):
    out, result = dataset
    assert set(result["manifests"]) == set(SPLITS)
    assert sum(result["clips"].values()) == 40
    ids = set()
    for split in SPLITS:
        rows = read_rows(out / f"{split}.jsonl")
        assert len(rows) == result["rows"][split] == result["clips"][split] * len(ALL_FAMILIES)
        for row in rows:
            for key in ("id", "video", "task", "answer", "type"):
                assert isinstance(row[key], str) and row[key].strip(), (key, row)
            assert row["task"] in ("qa", "caption", "classify")
            assert row["task"] == synth.FAMILIES[row["type"]]["task"]
            assert not Path(row["video"]).is_absolute()
            assert (out / row["video"]).is_file()
            assert row["id"] not in ids
            ids.add(row["id"])
        qa = [r for r in rows if r["task"] == "qa"]
        assert qa and all(isinstance(r["question"], str) and r["question"].strip() for r in qa)
        with_choices = [r for r in rows if "choices" in r]
        assert with_choices and all(r["answer"] in r["choices"] for r in with_choices)
        closed = [r for r in rows if synth.FAMILIES[r["type"]]["answers"] is not None]  # a fixed answer set
        assert closed and all(r["answer"] in synth.FAMILIES[r["type"]]["answers"] for r in closed)
    # the project's own manifest reader accepts them, when it is there
    try:
        from mirasol.data.manifest import read_manifest
    except ImportError:
        return
    for split in SPLITS:
        samples = read_manifest(out / f"{split}.jsonl")
        assert len(samples) == result["rows"][split]
        assert all(Path(s.video).is_file() for s in samples)


def test_every_family_in_every_split(dataset):
    out, _ = dataset
    for split in SPLITS:
        types = {row["type"] for row in read_rows(out / f"{split}.jsonl")}
        assert types == set(ALL_FAMILIES), split


def test_clips_are_not_shared_between_splits(dataset):
    out, _ = dataset
    videos = [{row["video"] for row in read_rows(out / f"{split}.jsonl")} for split in SPLITS]
    assert not (videos[0] & videos[1]) and not (videos[0] & videos[2]) and not (videos[1] & videos[2])


def test_answers_are_balanced():
    by_type: dict[str, Counter] = defaultdict(Counter)
    by_split_type: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for spec in synth.plan(400, 5):
        for row in synth.questions_for(spec):
            by_type[row["type"]][row["answer"]] += 1
            by_split_type[spec["split"], row["type"]][row["answer"]] += 1
    for family, counts in by_type.items():
        assert counts.most_common(1)[0][1] / sum(counts.values()) <= 0.6, (family, counts)
    closed = [f for f in by_type if synth.FAMILIES[f]["answers"] is not None]  # a fixed answer set
    assert closed
    for family in closed:
        answers, counts = synth.FAMILIES[family]["answers"], by_type[family]
        assert set(counts) == set(answers), family  # every answer occurs
        assert counts.most_common(1)[0][1] / sum(counts.values()) <= 1.0 / len(answers) + 0.06, (family, counts)
    # the families assigned balanced stay balanced in every split
    balanced = ("shape", "direction", "pitch", "beep_count", "start_color", "color_changes", "order")
    for split in SPLITS:
        for family in balanced:
            counts = by_split_type[split, family]
            assert counts and max(counts.values()) - min(counts.values()) <= 1, (split, family, counts)


def test_small_and_invalid_sizes(tmp_path):
    assert synth.split_sizes(1200) == {"train": 960, "val": 120, "test": 120}
    assert synth.split_sizes(3) == {"train": 1, "val": 1, "test": 1}
    with pytest.raises(ValueError):
        synth.split_sizes(2)
    with pytest.raises(ValueError):
        synth.plan(10, -1)


def test_cli(tmp_path, capsys):
    from mirasol.cli import main

    assert main(["synth", "--out", str(tmp_path / "d"), "--num", "4", "--seed", "2"]) == 0
    for split in SPLITS:
        assert (tmp_path / "d" / f"{split}.jsonl").is_file()
    assert len(list((tmp_path / "d" / "clips").glob("*.mp4"))) == 4
    world = json.loads((tmp_path / "d" / "world.json").read_text())
    assert world["num"] == 4 and world["seed"] == 2
    assert "4 clips" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# media


def decode(path):
    """All video frames (RGB uint8) with their times, and the audio as 16 kHz mono float32."""
    with av.open(str(path)) as container:
        assert len(container.streams.video) == 1 and len(container.streams.audio) == 1
        duration = container.duration / 1e6
        frames, times = [], []
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.time))
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
        chunks = []
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    return np.stack(frames), np.asarray(times), np.concatenate(chunks).astype(np.float32), duration


def test_mp4_has_video_and_audio_of_the_right_length(dataset):
    out, _ = dataset
    for path in sorted((out / "clips").glob("*.mp4"))[:5]:
        frames, times, audio, duration = decode(path)
        assert abs(duration - synth.SECONDS) < 0.1
        assert frames.shape == (synth.SECONDS * synth.FPS, synth.SIZE, synth.SIZE, 3)
        assert times[0] == 0.0 and abs(times[-1] - (synth.SECONDS - 1 / synth.FPS)) < 1e-3
        assert abs(len(audio) / 16000 - synth.SECONDS) < 0.1
        assert np.abs(audio).max() > 0.2  # loud


# ------------------------------------------------------------------------------------------------
# the oracle: answers from the media alone, at the tiny preset's resolution

PALETTE = np.array([synth.COLORS[c] for c in synth.COLOR_NAMES], dtype=np.float32)
TONE_HZ = np.array([synth.PITCHES[p] for p in synth.PITCH_NAMES])


def sample_frames(frames, times, fps=2.0, size=32, phase=0.0, seconds=4.0):
    """The frame shown at each sampling time (by timestamp), area-resized to size x size."""
    picks = []
    for i in range(int(round(seconds * fps))):
        t = phase + i / fps
        j = int(np.searchsorted(times, t + 1e-6, side="right") - 1)
        picks.append(frames[max(j, 0)])
    x = np.stack(picks).astype(np.float32)
    n, h, w, _ = x.shape
    f = h // size
    return x.reshape(n, size, f, size, f, 3).mean(axis=(2, 4))


def solve_video(small):
    """shape, direction, colour per second from [8, 32, 32, 3] frames (2 per second)."""
    border = np.concatenate([small[:, 0], small[:, -1], small[:, :, 0], small[:, :, -1]], axis=1)
    background = np.median(border.reshape(-1, 3), axis=0)
    masks = np.abs(small - background).max(axis=-1) > 60
    fills, centres, colours = [], [], []
    for frame, mask in zip(small, masks):
        ys, xs = np.nonzero(mask)
        box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        fills.append(mask.sum() / box)
        centres.append((xs.mean(), ys.mean()))
        colours.append(frame[mask].mean(axis=0))
    fill = float(np.median(fills))
    shape = "square" if fill > 0.9 else "circle" if fill > 0.67 else "triangle"
    dx, dy = np.subtract(centres[-1], centres[0])
    if abs(dx) > abs(dy):
        direction = "right" if dx > 0 else "left"
    else:
        direction = "down" if dy > 0 else "up"
    per_second = []
    for k in range(len(small) // 2):
        mean = np.mean(colours[2 * k: 2 * k + 2], axis=0)
        per_second.append(synth.COLOR_NAMES[int(np.argmin(((PALETTE - mean) ** 2).sum(axis=1)))])
    return shape, direction, per_second, fill


def solve_audio(audio, sr=16000):
    """pitch, beep count, noise second, which came first, from the waveform (25 ms / 10 ms STFT)."""
    win, hop = 400, 160
    n = 1 + (len(audio) - win) // hop
    idx = np.arange(win)[None, :] + hop * np.arange(n)[:, None]
    spec = np.abs(np.fft.rfft(audio[idx] * np.hanning(win), axis=1)) ** 2
    freqs = np.fft.rfftfreq(win, 1 / sr)
    energy = spec.sum(axis=1)
    loud = energy > 0.05 * np.percentile(energy, 99)
    bands = np.stack([spec[:, (freqs > f * 0.85) & (freqs < f * 1.15)].sum(axis=1) for f in TONE_HZ], axis=1)
    tonal = loud & (bands.max(axis=1) > 0.6 * energy)
    noisy = loud & ~tonal
    t = (np.arange(n) * hop + win / 2) / sr

    # beeps: runs of tonal frames, short gaps (<= 3 hops) bridged, runs of >= 5 hops counted
    runs, start, last = [], None, -10
    for i in np.nonzero(tonal)[0]:
        if i - last > 4:
            if start is not None:
                runs.append((start, last))
            start = i
        last = i
    if start is not None:
        runs.append((start, last))
    runs = [r for r in runs if r[1] - r[0] + 1 >= 5]
    pitch = synth.PITCH_NAMES[int(np.argmax(bands[tonal].sum(axis=0)))]
    noise_time = float(np.median(t[noisy]))
    beep_time = float(np.mean(t[tonal]))
    first = "beeps" if beep_time < noise_time else "noise"
    return pitch, len(runs), int(np.floor(noise_time)), first


def family_answers(shape, direction, colours, pitch, beeps, noise_second, first):
    """Every family's answer from what the oracle perceived."""
    changes = sum(a != b for a, b in zip(colours, colours[1:]))
    return {
        "shape": shape,
        "direction": direction,
        "pitch": pitch,
        "beep_count": synth.NUMBER_WORDS[min(beeps, 4)],
        "sync_color": colours[min(max(noise_second, 0), 3)],
        "start_color": colours[0],
        "end_color": colours[-1],
        "color_changes": synth.NUMBER_WORDS[changes],
        "order": first,
        "caption": f"{colours[0]} {shape} moves {direction} with {pitch} beeps",
        "classify": f"{pitch} {shape}",
    }


def oracle_answers(path, phase):
    frames, times, audio, _ = decode(path)
    shape, direction, colours, _ = solve_video(sample_frames(frames, times, phase=phase))
    return family_answers(shape, direction, colours, *solve_audio(audio))


def oracle_accuracy(out, answer_clip) -> dict:
    """Accuracy per family of `answer_clip(video path) -> {family: answer}` over every clip of every split."""
    by_clip = defaultdict(list)
    for row in (row for split in SPLITS for row in read_rows(out / f"{split}.jsonl")):
        by_clip[row["video"]].append(row)
    assert len(by_clip) == 40
    right, total = Counter(), Counter()
    for video, clip_rows in by_clip.items():
        predicted = answer_clip(out / video)
        for row in clip_rows:
            total[row["type"]] += 1
            right[row["type"]] += predicted[row["type"]] == row["answer"]
    return {family: right[family] / total[family] for family in total}


@pytest.mark.parametrize("phase", [0.0, 0.25])
def test_oracle_answers_from_media_alone(dataset, phase):
    """A hand-written solver that sees only the decoded media (32x32 at 2 fps sampled by
    timestamp, 16 kHz mono audio) answers every family: the information survives H.264/AAC
    encoding and the tiny preset's resolution, whatever the frame phase."""
    out, _ = dataset
    accuracy = oracle_accuracy(out, lambda path: oracle_answers(path, phase))
    assert set(accuracy) == set(ALL_FAMILIES)
    assert all(a >= 0.95 for a in accuracy.values()), accuracy


# ------------------------------------------------------------------------------------------------
# the same oracle on exactly what the model is fed (load_clip with the tiny preset), when present


def solve_log_mel(log_mel, band_hz, hop_s, shift, scale):
    """pitch, beep count, noise second, which came first, from a normalised log-mel [n_mels, T]."""
    power = np.exp(np.asarray(log_mel, dtype=np.float64) * scale + shift)
    energy = power.sum(axis=0)
    loud = energy > 0.05 * np.percentile(energy, 99)
    bins = [int(np.argmin(np.abs(band_hz - f))) for f in TONE_HZ]
    bands = np.stack([power[max(b - 1, 0):b + 2].sum(axis=0) for b in bins], axis=1)
    tonal = loud & (bands.max(axis=1) > 0.6 * energy)
    noisy = loud & ~tonal
    t = np.arange(power.shape[1]) * hop_s
    on = np.flatnonzero(tonal)
    starts = on[np.r_[True, np.diff(on) > 4]] if len(on) else on
    ends = on[np.r_[np.diff(on) > 4, True]] if len(on) else on
    beeps = int(np.sum(ends - starts + 1 >= 5))
    pitch = synth.PITCH_NAMES[int(np.argmax(bands[tonal].sum(axis=0)))]
    noise_time = float(np.median(t[noisy]))
    first = "beeps" if float(np.mean(t[tonal])) < noise_time else "noise"
    return pitch, beeps, int(np.floor(noise_time)), first


def test_oracle_on_model_inputs(dataset):
    """Answers every family from load_clip(path, tiny preset): the model's own 32x32 frames at
    2 fps and its 32-bin log-mel, so the information reaches the tiny model's inputs."""
    clip_mod = pytest.importorskip("mirasol.media.clip")
    features = pytest.importorskip("mirasol.media.features")
    from mirasol.config import MirasolConfig

    cfg = MirasolConfig.preset("tiny")
    out, _ = dataset
    band_hz = features.mel_band_centres(cfg.sample_rate, cfg.n_mels)

    def answer_clip(path):
        clip = clip_mod.load_clip(path, cfg)
        assert tuple(clip.video.shape) == (cfg.num_frames, 3, cfg.image_size, cfg.image_size)
        assert clip.has_audio and clip.valid_chunks == cfg.num_chunks
        small = clip.video.permute(0, 2, 3, 1).numpy() * 255.0
        shape, direction, colours, _ = solve_video(small)
        pitch, beeps, noise_second, first = solve_log_mel(
            clip.audio.numpy(), band_hz, cfg.audio_hop_ms / 1000.0, features.LOG_MEL_SHIFT, features.LOG_MEL_SCALE)
        return family_answers(shape, direction, colours, pitch, beeps, noise_second, first)

    accuracy = oracle_accuracy(out, answer_clip)
    assert set(accuracy) == set(ALL_FAMILIES)
    assert all(a >= 0.95 for a in accuracy.values()), accuracy
