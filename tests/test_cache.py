"""`prepare` / the clip cache and the dataset built on it."""

import collections
import json

import numpy as np
import pytest
import torch

from mirasol import MirasolConfig
from mirasol.cli import main as cli
from mirasol.data import cache as cache_mod
from mirasol.data.cache import CacheError, ClipCache, clip_key, prepare
from mirasol.data.dataset import ClipDataset, EpochBatches, collate, select_rows
from mirasol.data.manifest import read_manifest
from mirasol.data.tokenizer import MirasolTokenizer, tokenizer_texts
from mirasol.model import IGNORE_INDEX


@pytest.fixture
def manifest(tmp_path, media):
    """A 10 s file (whole, a window of it, and the whole again as another row), a file without
    audio, a 1 s file and an empty one."""
    (tmp_path / "empty.mp4").write_bytes(b"")
    long = str(media.path("long"))
    rows = [
        {"id": "good", "video": long, "task": "qa", "question": "what is cooked?", "answer": "pancake", "type": "food"},
        {"id": "good-window", "video": long, "start": 4.0, "end": 8.0, "task": "caption",
         "answer": "a pancake is flipped"},
        {"id": "same-clip", "video": long, "task": "classify", "answer": "cooking"},
        {"id": "silent", "video": str(media.path("one_pixel")), "task": "classify", "answer": "pixel"},
        {"id": "short", "video": str(media.path("short")), "task": "classify", "answer": "short"},
        {"id": "broken", "video": "empty.mp4", "task": "classify", "answer": "none"},
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_prepare_reports_ok_skipped_and_silent_clips(manifest, media, tmp_path):
    cfg = MirasolConfig.preset("tiny")
    out = tmp_path / "cache"
    report = prepare([manifest], out, cfg, workers=2, progress=False)
    assert report["ok"] == 4  # long whole, long window, one_pixel, short; the same clip is cached once
    assert [s["id"] for s in report["skipped"]] == ["broken"]
    assert "empty.mp4" in report["skipped"][0]["reason"]
    assert report["no_audio"] == ["silent"]
    assert json.loads((out / "report.json").read_text()) == report
    cache = ClipCache(out, cfg)
    video, audio, info = cache.get(clip_key(str(media.path("long")), 4.0, 8.0))
    assert video.shape == (cfg.num_frames, 3, 32, 32) and video.dtype == np.uint8
    assert audio.shape == (cfg.n_mels, cfg.audio_frames) and info["has_audio"]


def test_prepare_is_resumable_and_survives_a_torn_write(manifest, media, tmp_path, monkeypatch):
    cfg = MirasolConfig.preset("tiny")
    out = tmp_path / "cache"
    prepare([manifest], out, cfg, workers=1, progress=False)
    before = (out / "video.u8").read_bytes()
    # a run killed while appending leaves bytes of a row that index.jsonl never listed
    with open(out / "video.u8", "ab") as f:
        f.write(b"\x07" * 1000)
    calls = []
    real = cache_mod._decode
    monkeypatch.setattr(cache_mod, "_decode", lambda job: calls.append(job) or real(job))
    extra = tmp_path / "more.jsonl"
    extra.write_text(json.dumps({"id": "new", "video": str(media.path("fits")), "task": "caption",
                                 "answer": "x"}) + "\n")
    report = prepare([manifest, extra], out, cfg, workers=1, progress=False)
    assert [job[0].id for job in calls] == ["new"]  # nothing done twice, failures not retried
    assert report["ok"] == 5
    data = (out / "video.u8").read_bytes()
    assert data[: len(before)] == before and len(data) == 5 * int(np.prod((cfg.num_frames, 3, 32, 32)))


def test_cache_refuses_other_media_settings(manifest, tmp_path):
    prepare([manifest], tmp_path / "c", MirasolConfig.preset("tiny"), workers=1, progress=False)
    with pytest.raises(CacheError, match="other media settings.*image_size"):
        ClipCache(tmp_path / "c", MirasolConfig.preset("tiny", image_size=64))


def test_prepare_cli_exit_codes(manifest, tmp_path):
    assert cli(["prepare", "--manifest", str(manifest), "--out", str(tmp_path / "c"), "--workers", "1"]) == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "b", "video": str(tmp_path / "empty.mp4"), "task": "classify", "answer": "x"}) + "\n")
    # no usable clip at all: one error line naming the manifest and the first reason, exit 2
    assert cli(["prepare", "--manifest", str(bad), "--out", str(tmp_path / "c2"), "--workers", "1"]) == 2


def test_dataset_and_collate_build_model_batches(manifest, tmp_path):
    cfg = MirasolConfig.preset("tiny")
    prepare([manifest], tmp_path / "c", cfg, workers=1, progress=False)
    samples = read_manifest(manifest)
    tok = MirasolTokenizer.train(tokenizer_texts(samples), vocab_size=300)
    ds = ClipDataset(samples, ClipCache(tmp_path / "c", cfg), tok, max_len=32)
    assert len(ds) == 5 and ds.skipped == 1
    items = [ds[i] for i in range(len(ds))]
    batch = collate(items, tok.pad_id)
    # rows "good" and "same-clip" ask about one clip: it is stacked once and both rows point at it
    assert batch["media_index"].tolist() == [0, 1, 0, 2, 3]
    assert batch["video"].shape == (4, cfg.num_frames, 3, 32, 32) and batch["video"].dtype == torch.float32
    assert 0 <= batch["video"].min() and batch["video"].max() <= 1
    assert batch["audio"].shape == (4, cfg.n_mels, cfg.audio_frames)
    # the short clip lasts 1 s: of the tiny preset's four 1 s chunks, the last three are padding
    assert batch["chunk_mask"].tolist() == [[True] * 4, [True] * 4, [True] * 4, [True, False, False, False]]
    for row, it in enumerate(items):
        slot = batch["media_index"][row]
        assert torch.equal(batch["video"][slot], it["video"].float() / 255) and torch.equal(batch["audio"][slot], it["audio"])
    part = select_rows(batch, 1, 4)  # a micro-batch keeps only the clips its rows use
    assert part["video"].shape[0] == 3 and part["input_ids"].shape[0] == 3
    assert torch.equal(part["video"][part["media_index"]], batch["video"][batch["media_index"][1:4]])
    part = select_rows(batch, 2, 5)
    assert part["video"].shape[0] == 3 and torch.equal(part["audio"][part["media_index"]],
                                                         batch["audio"][batch["media_index"][2:5]])
    assert part["chunk_mask"][-1].tolist() == [True, False, False, False]
    ids, labels = batch["input_ids"], batch["labels"]
    assert ids.shape == labels.shape
    for row in range(5):
        sep = (ids[row] == tok.sep_id).nonzero()[0].item()
        assert (labels[row, : sep + 1] == IGNORE_INDEX).all()  # prompt positions ignored
        answer = labels[row][labels[row] != IGNORE_INDEX].tolist()
        assert answer[-1] == tok.eos_id and tok.decode(answer) == ds.samples[row].answer
    assert (batch["prompt_ids"][:, -1] == tok.sep_id).all()  # left-padded prompts end in sep


def test_epoch_batches_are_deterministic_and_split_by_rank():
    full = EpochBatches(10, 4, seed=3)
    it = iter(full)
    first = [next(it) for _ in range(5)]
    resumed = iter(EpochBatches(10, 4, seed=3, start_batch=3))
    assert next(resumed) == first[3]
    assert len(set(first[0] + first[1])) == 8  # no repeats within an epoch
    r0 = EpochBatches(10, 4, seed=3, rank=0, world=2).batch(0)
    r1 = EpochBatches(10, 4, seed=3, rank=1, world=2).batch(0)
    assert sorted(r0 + r1) == sorted(first[0])


def test_epoch_batches_keep_questions_about_one_clip_together():
    clips = [i // 5 for i in range(40)]  # 8 clips with 5 rows each
    batches = EpochBatches(40, 8, seed=1, clips=clips, questions_per_clip=3)
    epoch = [batches.batch(b) for b in range(5)]
    rows = sum(epoch, [])
    assert sorted(rows) == list(range(40))  # every row once per epoch
    for clip in range(8):  # a clip's 5 rows come as runs of 3 + 2 (which may happen to touch)
        where = [n for n, i in enumerate(rows) if clips[i] == clip]
        blocks = 1 + sum(b - a > 1 for a, b in zip(where, where[1:]))
        assert blocks <= 2, (clip, where)
    distinct = [len({clips[i] for i in b}) for b in epoch]
    assert sum(distinct) / len(distinct) < 5  # versus about 6.5 for 8 rows drawn freely
    assert batches.batch(7) == EpochBatches(40, 8, seed=1, start_batch=7, clips=clips, questions_per_clip=3).batch(7)
    assert batches.batch(5) != epoch[0]  # the next epoch is ordered afresh
    with pytest.raises(ValueError, match="clip id"):
        EpochBatches(40, 8, seed=1, questions_per_clip=3)


def test_epoch_batches_of_whole_clips_hold_batch_over_k_clips():
    clips = [i // 11 for i in range(11 * 12)]  # 12 clips with 11 questions each, as in the quickstart
    batches = EpochBatches(len(clips), 33, seed=0, clips=clips, questions_per_clip=11)
    for b in range(8):  # across the epoch boundary too
        assert sorted(collections.Counter(clips[i] for i in batches.batch(b)).values()) == [11, 11, 11]
    cut = EpochBatches(len(clips), 32, seed=0, clips=clips, questions_per_clip=8)  # runs of 8 + 3
    assert max(len({clips[i] for i in cut.batch(b)}) for b in range(8)) > 4
