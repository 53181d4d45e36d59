"""The whole user journey on a handful of synthetic clips: synth -> train -> evaluate -> ask."""

import json

import pytest

from mirasol.cli import main as cli
from mirasol.data.manifest import normalize_answer

pytestmark = pytest.mark.slow


def test_synth_train_evaluate_ask(tmp_path, capsys, generated_media):
    data, run = tmp_path / "data", tmp_path / "run"
    assert cli(["synth", "--out", str(data), "--num", "20", "--seed", "3"]) == 0
    assert cli(["train", "--config", "tiny", "--train", str(data / "train.jsonl"), "--val", str(data / "val.jsonl"),
                "--out", str(run), "train.max_steps=8", "train.batch_size=8", "train.eval_every=4",
                "train.eval_samples=16", "train.save_every=4", "train.warmup_steps=2"]) == 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "train_state.pt", "metrics.jsonl",
                 "curves.png", "train_stats.json"):
        assert (run / name).exists(), name
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_accuracy" in m for m in metrics) and metrics[-1]["step"] == 8

    report_path = tmp_path / "eval" / "report.json"
    assert cli(["evaluate", "--run", str(run), "--manifest", str(data / "test.jsonl"), "--out", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    test_rows = (data / "test.jsonl").read_text().splitlines()
    predictions = (report_path.parent / report["predictions"]).read_text().splitlines()
    rows = [json.loads(line) for line in predictions]
    assert report["n"] == len(test_rows) == len(rows)
    assert [p["id"] for p in rows] == [json.loads(r)["id"] for r in test_rows]
    # each row is marked by comparing the normalised answers, and the report counts those marks
    assert all(p["correct"] == (normalize_answer(p["prediction"]) == normalize_answer(p["answer"])) for p in rows)
    assert report["accuracy"] == pytest.approx(sum(p["correct"] for p in rows) / len(rows))
    assert set(report["by_type"]) >= {"shape", "pitch", "sync_color", "order", "caption", "classify"}
    for name, family in report["by_type"].items():
        group = [p for p in rows if p["type"] == name]
        assert set(family) == {"n", "accuracy", "answer_prior"} and family["n"] == len(group)
        assert family["accuracy"] == pytest.approx(sum(p["correct"] for p in group) / len(group))
    assert "answer_prior" in report["baselines"] and "cider" in report["caption"]
    # rows with choices are answered by one of them; classify rows by a training label
    stats = json.loads((run / "train_stats.json").read_text())
    order = [p for p in rows if p["type"] == "order"]
    assert order and all(p["prediction"] in ("beeps", "noise") for p in order)
    classify = [p for p in rows if p["task"] == "classify"]
    assert classify and all(p["prediction"] in stats["labels"] for p in classify)

    # a manifest that interleaves clips: the same answer per row, predictions in the manifest's order
    shuffled = test_rows[1::2] + test_rows[0::2]
    (data / "shuffled.jsonl").write_text("\n".join(shuffled) + "\n")
    report2_path = tmp_path / "eval2" / "report.json"
    assert cli(["evaluate", "--run", str(run), "--manifest", str(data / "shuffled.jsonl"), "--out", str(report2_path)]) == 0
    again = [json.loads(line) for line in (report2_path.parent / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in again] == [json.loads(r)["id"] for r in shuffled]
    first = {json.loads(line)["id"]: json.loads(line)["prediction"] for line in predictions}
    assert {p["id"]: p["prediction"] for p in again} == first

    video = data / json.loads(test_rows[0])["video"]
    capsys.readouterr()
    # chosen among the family's training answers: one of the shapes, whatever an 8-step model knows
    assert cli(["ask", "--run", str(run), str(video), "what shape is the object?", "--family", "shape"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() in stats["answers_by_family"]["shape"] and len(stats["answers_by_family"]["shape"]) > 1
    assert "note:" not in captured.err  # synthetic clips are exactly as long as the model's clip
    # a caption: one line, no longer than the run's longest training answer
    assert cli(["ask", "--run", str(run), str(video)]) == 0
    caption = capsys.readouterr().out
    assert caption.count("\n") == 1 and len(caption.split()) < stats["max_answer_tokens"]
    assert cli(["ask", "--run", str(run), str(tmp_path / "missing.mp4"), "what?"]) == 2
    assert "missing.mp4" in capsys.readouterr().err
    long_video = generated_media.path("long")  # longer than the tiny preset's 4 s
    assert cli(["ask", "--run", str(run), str(long_video), "what is cooked?", "--start", "4"]) == 0
    err = capsys.readouterr().err
    assert "answering about 4.0-8.0 s of" in err and "--start/--end" in err


def test_quickstart_runs_the_whole_journey_small(tmp_path, capsys):
    from mirasol.quickstart import quickstart

    report = quickstart(tmp_path / "qs", num=16, progress=False,
                        overrides=["train.max_steps=4", "train.batch_size=8", "train.eval_every=0",
                                   "train.warmup_steps=1", "train.plots=false"])
    saved = json.loads((tmp_path / "qs" / "report.json").read_text())
    assert saved["n"] == report["n"] > 0 and "by_type" in saved and "answer_prior" in saved["baselines"]
    out = capsys.readouterr().out
    assert "all" in out and "mirasol ask --run" in out
    assert set(report["phase_seconds"]) == {"synth", "prepare + train", "evaluate"}
    assert "prepare + train" in out and all(v >= 0 for v in report["phase_seconds"].values())


def test_a_run_trained_with_uniform_windows_is_evaluated_and_asked_with_them(tmp_path, capsys):
    """clip_window is a media setting of the run: evaluate and ask decode long videos the same way."""
    import numpy as np

    from mirasol.data.cache import ClipCache, clip_key, default_cache_dir
    from mirasol.media import load_clip
    from mirasol.media.writer import write_video
    from mirasol.run_dir import load_run

    rows = []
    for i, color in enumerate(["red", "green", "red", "green"]):
        frames = np.zeros((120, 48, 64, 3), np.uint8)  # 12 s at 10 fps, three times the tiny clip
        frames[60:, :, :, 0 if color == "red" else 1] = 200  # the colour shows in the second half only
        write_video(tmp_path / f"v{i}.mp4", frames, 10, 0.1 * np.ones(12 * 16000, np.float32), 16000)
        rows.append({"id": f"r{i}", "video": f"v{i}.mp4", "task": "qa", "question": "what color appears?",
                     "answer": color})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    assert cli(["train", "--config", "tiny", "--train", str(manifest), "--out", str(run), "model.clip_window=uniform",
                "train.max_steps=2", "train.batch_size=4", "train.warmup_steps=1", "train.eval_every=0",
                "train.plots=false"]) == 0
    report = tmp_path / "eval" / "report.json"
    assert cli(["evaluate", "--run", str(run), "--manifest", str(manifest), "--out", str(report)]) == 0
    model = load_run(run)[0]
    assert model.cfg.clip_window == "uniform"
    cache = ClipCache(default_cache_dir(manifest, model.cfg), model.cfg)
    video, _, _ = cache.get(clip_key(str(tmp_path / "v0.mp4"), None, None))
    clip = load_clip(tmp_path / "v0.mp4", model.cfg)
    assert np.array_equal(video, (clip.video * 255).round().byte().numpy())
    assert video[-1, 0].mean() > 150 and video[0, 0].mean() < 10  # the last chunk sees the colour, the first not
    capsys.readouterr()
    assert cli(["ask", "--run", str(run), str(tmp_path / "v0.mp4"), "what color appears?"]) == 0
    assert "spread over 0.0-12.0 s" in capsys.readouterr().err
