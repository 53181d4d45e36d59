"""`mirasol quickstart [--out DIR]`: the whole journey on the built-in world, in one command:
synth -> prepare -> train the tiny preset -> evaluate the test split -> a table per family."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


QUICKSTART_CLIPS = 3000  # 11 questions each; the relational families need this many clips to generalise


def quickstart(out: str | Path = "quickstart", num: int = QUICKSTART_CLIPS, overrides: list[str] = (),
               seed: int = 0, progress: bool = True, command: str | None = None) -> dict:
    """`command`: the command line that started this (recorded in the run, for its model card)."""
    from mirasol.corpora.synth import synthesize
    from mirasol.eval.evaluate import evaluate, format_table
    from mirasol.run_config import load_run_config
    from mirasol.train.loop import train

    out = Path(out)
    began = time.perf_counter()
    seconds: dict[str, float] = {}  # wall time per phase: where the quickstart's minutes go
    data = out / "data"
    print(f"[1/3] writing the built-in audio-visual dataset to {data}", file=sys.stderr)
    if not (data / "test.jsonl").exists():
        synthesize(data, num=num, seed=seed)
    seconds["synth"] = time.perf_counter() - began
    run_cfg = load_run_config("tiny", list(overrides))
    run = out / "run"
    resume = (run / "checkpoints").exists()
    print(f"[2/3] training the tiny model in {run}" + (" (resuming)" if resume else ""), file=sys.stderr)
    if not resume or _steps_done(run) < run_cfg.train.max_steps:
        train(run_cfg, str(data / "train.jsonl"), str(data / "val.jsonl"), run, resume=resume, progress=progress,
              command=command)
    seconds["prepare + train"] = time.perf_counter() - began - sum(seconds.values())
    print("[3/3] evaluating on the test split", file=sys.stderr)
    report = evaluate(run, data / "test.jsonl", out / "report.json", progress=progress)
    seconds["evaluate"] = time.perf_counter() - began - sum(seconds.values())
    minutes = (time.perf_counter() - began) / 60
    print(format_table(report))
    print(f"\nwall time {minutes:.1f} min (" + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
          + f"); report: {out / 'report.json'}")
    example = json.loads((data / "test.jsonl").read_text().splitlines()[0])
    video = (data / example["video"]).resolve()
    print("\nask the trained model about a video:")
    print(f'  mirasol ask --run {run} {video} "{example.get("question") or "what shape is the object?"}"')
    print(f"  mirasol ask --run {run} {video}        # no question: a caption")
    report["wall_minutes"], report["phase_seconds"] = minutes, seconds
    return report


def _steps_done(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    if not metrics.exists():
        return 0
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.strip()]
    return max(steps, default=0)
