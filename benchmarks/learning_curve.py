"""Where does a run's validation accuracy level off? Every kept checkpoint of a run, scored on a
manifest with `mirasol evaluate`'s own scoring.

    PYTHONPATH=src python benchmarks/learning_curve.py RUN VAL.jsonl [--every N] [--out curve.json]

Train with `train.keep_checkpoints` large enough to keep them all (e.g. `train.save_every=250
train.keep_checkpoints=100`). A checkpoint folder holds the model and its config; the run's
tokenizer and training statistics are read from RUN. Prints one line per checkpoint (step, overall
accuracy, accuracy per family) and writes them as JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch


def curve(run: Path, manifest: Path, every: int = 1) -> list[dict]:
    from mirasol.eval.evaluate import evaluate
    from mirasol.run_dir import checkpoint_dirs

    rows = []
    for step_dir in checkpoint_dirs(run):
        step = int(step_dir.name.split("_")[-1])
        if step % every:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            for name in ("tokenizer.json", "train_stats.json"):
                shutil.copy(run / name, folder / name)
            for name in ("model.safetensors", "config.json"):
                shutil.copy(step_dir / name, folder / name)
            report = evaluate(folder, manifest, folder / "report.json", progress=False)
        rows.append({"step": step, "accuracy": report["accuracy"], "n": report["n"],
                     "by_type": {k: v["accuracy"] for k, v in sorted(report["by_type"].items())}})
        families = " ".join(f"{k} {v:.2f}" for k, v in rows[-1]["by_type"].items())
        print(f"step {step:6d}  {report['accuracy']:.3f}  {families}", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a run folder with checkpoints/step_* in it")
    p.add_argument("manifest", type=Path, help="the manifest to score on (the validation split)")
    p.add_argument("--every", type=int, default=1, help="only steps divisible by this")
    p.add_argument("--out", type=Path, default=None, help="write the curve as JSON here")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not (args.run / "checkpoints").is_dir():
        print(f"{args.run}: no checkpoints/ folder (train with train.keep_checkpoints=100)", file=sys.stderr)
        return 2
    rows = curve(args.run, args.manifest, args.every)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
