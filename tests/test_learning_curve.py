"""benchmarks/learning_curve.py: a run's checkpoints scored as `mirasol evaluate` scores the run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("av")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import learning_curve  # noqa: E402


def test_the_last_checkpoint_scores_as_the_finished_run(trained_run, tmp_path, capsys):
    _, data, run = trained_run
    rows = learning_curve.curve(run, data / "test.jsonl")
    report = json.loads((run / "eval" / "report.json").read_text())
    assert rows and rows[-1]["step"] == 4
    assert rows[-1]["accuracy"] == report["accuracy"] and rows[-1]["n"] == report["n"]
    assert rows[-1]["by_type"] == {k: v["accuracy"] for k, v in sorted(report["by_type"].items())}
    assert "step      4" in capsys.readouterr().out
    assert learning_curve.main([str(tmp_path), str(data / "test.jsonl")]) == 2  # no checkpoints: says so
