"""The run directory: everything that reads or writes one, for training and evaluation alike.

    RUN/config.json           run config (model + train + data sections), enough to rebuild everything
    RUN/tokenizer.json        the tokenizer the model was trained with
    RUN/train_stats.json      what evaluation needs from the training set (closed label set, answer priors)
    RUN/model.safetensors     }
    RUN/train_state.pt        } copies of the latest checkpoint, for from_pretrained and --resume
    RUN/checkpoints/step_00000500/{config.json, model.safetensors, train_state.pt}
    RUN/metrics.jsonl, curves.png

Checkpoints are written atomically (temp folder + rename), so a run killed at any moment leaves
either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import collections
import json
import re
import shutil
from pathlib import Path

import torch

from mirasol.data.tokenizer import MirasolTokenizer
from mirasol.datasets.manifest import family, normalize_answer

STEP_DIR = re.compile(r"^step_(\d+)$")


# --- run files written once at the start of training ---------------------------------------
def train_stats(samples) -> dict:
    """What evaluation needs from the training set: the closed label set and answer priors."""
    by_family: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for s in samples:
        by_family[family(s)][normalize_answer(s.answer)] += 1
    return {
        "labels": sorted({s.answer for s in samples if s.task == "classify"}),
        "answer_prior": {f: c.most_common(1)[0][0] for f, c in by_family.items()},
        "num_samples": len(samples),
    }


def write_run_files(run: Path, run_config: dict, tokenizer: MirasolTokenizer, stats: dict) -> None:
    run.mkdir(parents=True, exist_ok=True)
    tokenizer.save(run / "tokenizer.json")
    (run / "config.json").write_text(json.dumps(run_config, indent=2, sort_keys=True))
    (run / "train_stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False))


def load_tokenizer(run: str | Path) -> MirasolTokenizer:
    return MirasolTokenizer.load(Path(run) / "tokenizer.json")


def load_train_stats(run: str | Path) -> dict:
    stats_file = Path(run) / "train_stats.json"
    return json.loads(stats_file.read_text()) if stats_file.exists() else {"labels": [], "answer_prior": {}}


def load_run(run: str | Path, device: str | torch.device = "cpu"):
    """(model, tokenizer, train stats, run config) of a finished (or checkpointed) run."""
    from mirasol.model import Mirasol
    from mirasol.train.config import load_run_config

    run = Path(run)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (run / name).exists():
            raise FileNotFoundError(f"{run / name} not found: is {run} a finished `mirasol train` run directory?")
    model = Mirasol.from_pretrained(run, device=device)
    return model, load_tokenizer(run), load_train_stats(run), load_run_config(run)


# --- checkpoints ----------------------------------------------------------------------------
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
