"""Checkpoints of a run directory, written atomically (temp folder + rename) so that a run killed
at any moment leaves either the previous checkpoint or the new one, never half of one.

    RUN/checkpoints/step_00000500/{config.json, model.safetensors, train_state.pt}
    RUN/{config.json, model.safetensors, train_state.pt}      copies of the latest, for from_pretrained
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_dirs(run: Path) -> list[Path]:
    root = run / "checkpoints"
    if not root.exists():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def _atomic_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)


def save_checkpoint(run: Path, model, run_config: dict, train_state: dict, step: int, keep: int) -> Path:
    root = run / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".step_{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    (tmp / "config.json").write_text(json.dumps(run_config, indent=2, sort_keys=True))
    model.save_pretrained(tmp)
    torch.save(train_state, tmp / "train_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for name in ("config.json", "model.safetensors", "train_state.pt"):
        _atomic_copy(final / name, run / name)
    for old in checkpoint_dirs(run)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run: Path) -> Path | None:
    dirs = checkpoint_dirs(run)
    return dirs[-1] if dirs else None


def load_train_state(checkpoint: Path) -> dict:
    return torch.load(checkpoint / "train_state.pt", map_location="cpu", weights_only=True)
