"""The long world (mirasol.corpora.long_world): the plan's rules, and every event landing in the
time chunk its metadata names, in the decoded video and audio at the `tiny` preset's sampling
(32 chunks of 1 s, 32x32 frames at 2 fps, 32 log-mel bins)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

av = pytest.importorskip("av")

from mirasol import MirasolConfig  # noqa: E402
from mirasol.cli import main  # noqa: E402
from mirasol.corpora import long_world as lw  # noqa: E402
from mirasol.media.clip import load_clip  # noqa: E402
from mirasol.media.features import SILENCE, mel_band_centres  # noqa: E402


def test_plan_rules_and_balance():
    specs = lw.plan_long(200, seed=1)
    assert [s["split"] for s in specs].count("train") == 160
    for s in specs:
        assert len(s["colors"]) == 32
        changes = sum(a != b for a, b in zip(s["colors"], s["colors"][1:]))
        assert changes in lw.COLOR_CHANGES
        assert abs(s["flash"] - s["noise"]) >= 8  # far apart: a quarter of the clip
        assert len(s["tones"]) in lw.TONE_COUNTS and s["noise"] not in s["tones"]
        assert len(set(s["tones"])) == len(s["tones"]) == len(s["pitches"])
        assert not set(s["chirps"]) & (set(s["tones"]) | {s["noise"]})  # decoys in quiet seconds
    train = [s for s in specs if s["split"] == "train"]
    for family in ("start_color", "color_changes", "first_pitch", "tone_count", "order"):
        counts = Counter(lw.answers_for(s)[family] for s in train)
        assert max(counts.values()) - min(counts.values()) <= 1, (family, counts)
        assert len(counts) == len(lw.FAMILIES[family]["answers"])
    assert lw.plan_long(20, 0) == lw.plan_long(20, 0) and lw.plan_long(20, 0) != lw.plan_long(20, 1)


def test_questions_need_the_whole_clip():
    """No single chunk answers the counting and order families: their answers come from events in
    several chunks, and the same chunk content appears with different answers."""
    specs = lw.plan_long(120, seed=0)
    for s in specs:
        rows = lw.questions_for(s)
        assert [r["type"] for r in rows] == list(lw.FAMILIES)
        assert {r["answer"] for r in rows if r["type"] == "order"} <= set(lw.ORDERS)
    assert len({len(s["tones"]) for s in specs}) == 3
    spans = [max(s["tones"]) - min(s["tones"]) for s in specs]
    assert np.mean(spans) > 10  # tones spread over the clip, not bunched in one place


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("long") / "data"
    lw.synthesize_long(out, num=3, seed=0, progress=False)
    return out, json.loads((out / "world.json").read_text())["specs"]


def _expected_bin(hz: float, cfg: MirasolConfig) -> int:
    return int(np.argmin(np.abs(mel_band_centres(cfg.sample_rate, cfg.n_mels) - hz)))


def test_every_event_lands_in_its_chunk(world):
    out, specs = world
    cfg = MirasolConfig.preset("tiny", num_chunks=32)
    for spec in specs:
        clip = load_clip(out / "clips" / f"{spec['clip']}.mp4", cfg)
        video = clip.video.numpy()  # [64, 3, 32, 32] in [0, 1]
        audio = clip.audio.numpy()  # [32, 3200]
        assert video.shape[0] == 64 and audio.shape[1] == 3200
        for t in range(32):
            frames = video[2 * t: 2 * t + 2] * 255
            # video: the object's colour at the centre, the flash in the background, the decoy dot
            centre = frames[:, :, 14:18, 14:18].mean(axis=(0, 2, 3))
            nearest = min(lw.COLORS, key=lambda c: np.abs(centre - np.asarray(lw.COLORS[c])).sum())
            assert nearest == spec["colors"][t], (spec["clip"], t, centre)
            corner = frames[:, :, 28:31, 28:31].mean()
            assert (corner > 120) == (t == spec["flash"]), (spec["clip"], t, corner)
            dot = frames[:, :, 1:4, 1:4].mean()
            assert (dot > 215) == (t in spec["dots"]), (spec["clip"], t, dot)
            # audio: sound only where an event is, tones peak in their pitch's band
            chunk = audio[:, 100 * t: 100 * (t + 1)]
            loud = chunk.max() > SILENCE + 1.0
            assert loud == (t in spec["tones"] or t == spec["noise"] or t in spec["chirps"]), (spec["clip"], t)
        assert spec["tones"] and len(spec["tones"]) == len(spec["pitches"])
        for t, pitch in zip(spec["tones"], spec["pitches"]):  # tones peak in their pitch's band
            chunk = audio[:, 100 * t: 100 * (t + 1)]
            peak = int(chunk.max(axis=1).argmax())
            assert abs(peak - _expected_bin(lw.PITCHES[pitch], cfg)) <= 1, (spec["clip"], t, pitch, peak)
            # and inside the chunk at the seconds the metadata gives (0.25-0.65 s)
            frames_on = np.nonzero(chunk[peak] > SILENCE + 1.0)[0]
            assert 15 <= frames_on.min() <= 35 and 55 <= frames_on.max() <= 75
        noise = audio[:, 100 * spec["noise"]: 100 * (spec["noise"] + 1)]
        assert (noise.max(axis=1) > SILENCE + 1.0).mean() > 0.8  # broadband


def test_cli_writes_the_long_world_and_keeps_clips(tmp_path, capsys):
    out = tmp_path / "w"
    assert main(["synth", "--world", "long", "--seconds", "8", "--num", "4", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * len(lw.FAMILIES) and rows[-1]["type"] == "order" and rows[-1]["choices"]
    first = (out / "clips" / "L00000.mp4").stat().st_mtime_ns
    again = lw.synthesize_long(out, num=4, seed=0, seconds=8, progress=False)
    assert (out / "clips" / "L00000.mp4").stat().st_mtime_ns == first  # resumable: kept, not rewritten
    assert again["clips"] == {"train": 2, "val": 1, "test": 1}
    assert main(["synth", "--seconds", "8", "--out", str(tmp_path / "x")]) == 2
    assert "--world long" in capsys.readouterr().err
