"""Online rows (`at`): the manifest key, the long world's online families and `evaluate --online`,
which answers each such row from the video before `at` only."""

from __future__ import annotations

import json

import pytest
import torch

from mirasol import Mirasol, MirasolConfig
from mirasol.cli import main as cli
from mirasol.corpora.long_world import ONLINE_FAMILIES, online_answers, plan_long, synthesize_long
from mirasol.data.manifest import ManifestError, read_manifest
from mirasol.data.tokenizer import MirasolTokenizer
from mirasol.eval.online import accuracy_over_time
from mirasol.run_config import load_run_config
from mirasol.run_dir import write_run_files


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_manifest_at_ends_the_row_there(tmp_path):
    base = {"video": "a.mp4", "question": "q?", "answer": "a"}
    [row] = read_manifest(write_rows(tmp_path / "m.jsonl", [{**base, "at": 5}]))
    assert row.at == 5.0 and row.end == 5.0  # nothing after `at` is read, on any path
    assert row.to_dict()["at"] == 5.0
    [row] = read_manifest(write_rows(tmp_path / "m.jsonl", [{**base, "start": 2, "end": 9, "at": 6.5}]))
    assert (row.start, row.end, row.at) == (2.0, 6.5, 6.5)
    for bad, words in [({"at": 0}, "greater than start"), ({"start": 3, "at": 2}, "greater than start"),
                       ({"end": 4, "at": 5}, "not be after end"), ({"at": "x"}, "finite number")]:
        with pytest.raises(ManifestError, match=f"key 'at': .*{words}"):
            read_manifest(write_rows(tmp_path / "m.jsonl", [{**base, **bad}]))


def test_online_answers_follow_the_events():
    spec = plan_long(10, 0, 16)[0]
    for at in range(1, 17):
        answers = online_answers(spec, at)
        assert answers["color_now"] == spec["colors"][at - 1]
        assert answers["tones_so_far"] == ["zero", "one", "two", "three", "four"][sum(t < at for t in spec["tones"])]
        assert answers["burst_yet"] == ("yes" if at > spec["noise"] else "no")
        assert all(answers[f] in ONLINE_FAMILIES[f]["answers"] for f in answers)


def test_accuracy_over_time_bins_rows_by_at():
    rows = [{"type": "x", "at": at, "correct": ok} for at, ok in [(1, True), (2, False), (7, True), (8, True)]]
    assert accuracy_over_time(rows, bins=2) == {"x": [{"at": [0, 4], "n": 2, "accuracy": 0.5},
                                                      {"at": [4, 8], "n": 2, "accuracy": 1.0}]}
    assert accuracy_over_time([{"type": "x", "at": None, "correct": True}]) == {}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    tokenizer = MirasolTokenizer.train(["what color is the object now?", "red", "yes", "no"], vocab_size=300)
    config = load_run_config("tiny")
    write_run_files(run, config.to_dict(), tokenizer, {"labels": [], "answer_prior": {}, "num_samples": 0,
                                                       "max_answer_tokens": 2})
    torch.manual_seed(0)
    Mirasol(MirasolConfig.from_dict(config.to_dict()["model"])).save_pretrained(run)
    return run


def test_evaluate_online_answers_each_row_from_before_its_at(run, tmp_path, monkeypatch, capsys):
    import mirasol.eval.predict as predict

    synthesize_long(tmp_path / "world", num=10, seconds=8, online=True, progress=False)
    manifest = tmp_path / "world" / "test.jsonl"
    rows = read_manifest(manifest)
    timed = [r for r in rows if r.at is not None]
    assert {r.type for r in timed} == set(ONLINE_FAMILIES) and len(timed) == 4 * len(ONLINE_FAMILIES)
    seen = []
    original = predict.predict_from_memory

    def spy(model, tokenizer, memory, prompt_ids, samples, **kwargs):
        chunks = memory.shape[1] // model.cfg.combiner_tokens if memory.dim() == 3 else memory.shape[1]
        seen.extend((s.at, chunks) for s in samples)
        return original(model, tokenizer, memory, prompt_ids, samples, **kwargs)

    monkeypatch.setattr(predict, "predict_from_memory", spy)
    out = tmp_path / "eval" / "report.json"
    assert cli(["evaluate", "--run", str(run), "--manifest", str(manifest), "--out", str(out), "--online"]) == 0
    # each timed row answered from the chunks (1 s each) before its `at`; the others from all 8
    assert sorted(a for a, _ in seen if a is not None) == sorted(r.at for r in timed)
    assert all(chunks == int(at) for at, chunks in seen if at is not None)
    assert all(chunks == 8 for at, chunks in seen if at is None)
    report = json.loads(out.read_text())
    assert set(report["online"]) == set(ONLINE_FAMILIES) and report["n"] == len(rows)
    assert "accuracy by when asked" in capsys.readouterr().out
    assert cli(["evaluate", "--run", str(run), "--manifest", str(manifest), "--out", str(out), "--online",
                "--whole"]) == 2
