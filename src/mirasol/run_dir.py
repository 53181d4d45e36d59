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
import pickle
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError

from mirasol.data.tokenizer import MirasolTokenizer
from mirasol.datasets.manifest import family, normalize_answer
from mirasol.errors import MirasolError

STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(MirasolError):
    """A checkpoint file was refused (not plain tensors) or cannot be read. The message names the file."""


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
    run_cfg = load_run_config(run)
    model = Mirasol(run_cfg.model)  # what Mirasol.from_pretrained does, with errors that name the file
    load_weights(model, run / "model.safetensors", device)
    return model.to(device).eval(), load_tokenizer(run), load_train_stats(run), run_cfg


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


def load_weights(model, file: Path, device: str | torch.device = "cpu") -> None:
    from safetensors.torch import load_model

    try:
        load_model(model, str(file), device=str(device))
    except (SafetensorError, RuntimeError) as err:
        raise _weights_error(file, err) from None


def _weights_error(file: Path, err: Exception) -> CheckpointError:
    if isinstance(err, SafetensorError):
        return CheckpointError(f"{file}: not a readable safetensors file ({err}); the file is damaged")
    # load_state_dict: missing or unexpected keys, other shapes; the first of them is enough
    detail = " ".join(str(err).split())
    if len(detail) > 300:
        detail = detail[:detail.rfind(". ", 0, 300) + 1] + " ..."
    return CheckpointError(f"{file} does not fit the model this config builds; were the model settings "
                           f"changed since it was trained? ({detail})")


def load_train_state(checkpoint: Path) -> dict:
    """The optimizer, scheduler, step and RNG state. Loaded with weights_only=True: a file holding
    anything but tensors, numbers and containers is refused, since unpickling it could run code."""
    file = checkpoint / "train_state.pt"
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))  # the class or function it would have imported
        what = f"it holds a pickled {found.group(1)}" if found else "it is not in torch's tensor format"
        raise CheckpointError(
            f"{file} was refused: it is not a plain tensor file ({what}), and loading it could run arbitrary "
            f"code. `mirasol train` writes only tensors and numbers there, so this file came from elsewhere: "
            f"delete {checkpoint} to resume from the checkpoint before it, or start a new run") from None
    except (EOFError, RuntimeError) as err:  # empty, truncated, or not a zip archive
        detail = " ".join(str(err).split())[:200] or "empty file"
        raise CheckpointError(f"{file}: not a readable checkpoint ({detail}); the file is damaged: "
                              f"delete {checkpoint} to resume from the checkpoint before it") from None
