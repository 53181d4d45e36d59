"""The run directory: everything that reads or writes one, for training and evaluation alike.

    RUN/config.json           run config (model + train + data sections), enough to rebuild everything
    RUN/tokenizer.json        the tokenizer the model was trained with
    RUN/train_stats.json      what evaluation needs from the training set (closed label set, answer priors)
    RUN/model.safetensors     }
    RUN/train_state.pt        } copies of the latest checkpoint, for from_pretrained and --resume
    RUN/checkpoints/step_00000500/{config.json, model.safetensors, train_state.pt}
    RUN/checkpoints/step_00000500/sharded/       train.strategy=fsdp: model + optimizer, one file per
                                                 process (torch.distributed.checkpoint); resumable on
                                                 any number of processes
    RUN/metrics.jsonl, curves.png
    RUN/commands.jsonl        the command line of each start of training (the first, then each --resume)

Checkpoints are written atomically (temp folder + rename), so a run killed at any moment leaves
either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import collections
import json
import pickle
import re
import shutil
import warnings
from pathlib import Path

import torch

from mirasol.data.tokenizer import MirasolTokenizer
from mirasol.data.manifest import family, normalize_answer
from mirasol.errors import CheckpointError
from mirasol.model import Mirasol
from mirasol.run_config import load_run_config

STEP_DIR = re.compile(r"^step_(\d+)$")


# --- run files written once at the start of training ---------------------------------------
MAX_FAMILY_ANSWERS = 256  # answers kept per family for closed answering (the most frequent)


def train_stats(samples, tokenizer: MirasolTokenizer | None = None) -> dict:
    """What answering and evaluation need from the training set: the closed label set, answer
    priors, each family's answers (for answering by choosing among them) and, given the tokenizer,
    the longest answer in tokens with its EOS (where free answers stop: a model asked about media
    unlike its training world would otherwise run on to the generation limit)."""
    by_family: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    spelling: dict[tuple[str, str], str] = {}
    for s in samples:
        key = normalize_answer(s.answer)
        by_family[family(s)][key] += 1
        spelling.setdefault((family(s), key), s.answer.strip())
    stats = {
        "labels": sorted({s.answer for s in samples if s.task == "classify"}),
        "answer_prior": {f: c.most_common(1)[0][0] for f, c in by_family.items()},
        "answers_by_family": {f: sorted(spelling[f, a] for a, _ in c.most_common(MAX_FAMILY_ANSWERS))
                              for f, c in sorted(by_family.items())},
        "num_samples": len(samples),
    }
    if tokenizer is not None and samples:
        stats["max_answer_tokens"] = max(len(tokenizer.encode_answer(s.answer)) for s in samples)
    return stats


def write_run_files(run: Path, run_config: dict, tokenizer: MirasolTokenizer, stats: dict) -> None:
    run.mkdir(parents=True, exist_ok=True)
    tokenizer.save(run / "tokenizer.json")
    (run / "config.json").write_text(json.dumps(run_config, indent=2, sort_keys=True))
    (run / "train_stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False))


COMMANDS_FILE = "commands.jsonl"  # one line per start of training (the first, then each --resume)


def record_command(run: Path, command: str | None, train: str, val: str | None, resume: bool, step: int) -> None:
    """Add this start of training to RUN/commands.jsonl: the command line that started it (None when
    training was started from Python), its manifests and the step it started from."""
    from datetime import datetime, timezone

    entry = {"command": command, "train": str(train), "val": str(val) if val else None, "resume": resume,
             "from_step": step, "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    with open(Path(run) / COMMANDS_FILE, "a") as f:
        f.write(json.dumps(entry, ensure_ascii=False) + "\n")


def read_commands(run: str | Path) -> list[dict]:
    """RUN/commands.jsonl's entries, oldest first; [] for runs trained before it was kept."""
    file = Path(run) / COMMANDS_FILE
    if not file.exists():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def load_tokenizer(run: str | Path, cfg=None) -> MirasolTokenizer:
    """The run's tokenizer: ours, or its text backbone's own (with the special ids of its config).
    `cfg`: the run's model config, when the caller has read it already."""
    from mirasol.data.tokenizer import tokenizer_for

    return tokenizer_for(cfg if cfg is not None else load_run_config(run).model, Path(run) / "tokenizer.json")


def load_train_stats(run: str | Path) -> dict:
    stats_file = Path(run) / "train_stats.json"
    return json.loads(stats_file.read_text()) if stats_file.exists() else {"labels": [], "answer_prior": {}}


def check_run_dir(run: str | Path) -> Path:
    """`run` (a folder, or the Hub repository id of one: mirasol/model/hub.py) as a local Path, once
    it holds a run's files (else FileNotFoundError saying what it lacks)."""
    from mirasol.model.hub import local_folder

    run = local_folder(run)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (run / name).exists():
            raise FileNotFoundError(f"{run / name} not found: is {run} a finished `mirasol train` run directory?")
    return run


def load_run(run: str | Path, device: str | torch.device = "cpu"):
    """(model, tokenizer, train stats, run config) of a finished (or checkpointed) run, a `mirasol
    export` folder, or the Hub repository id of one. config.json is read once, here."""
    run = check_run_dir(run)
    run_cfg = load_run_config(run)
    model = Mirasol.from_pretrained(run, device, config=run_cfg.model)
    return model, load_tokenizer(run, run_cfg.model), load_train_stats(run), run_cfg


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
    for name in ("config.json", "model.safetensors", "train_state.pt", "backbones.json"):
        if (final / name).exists():
            _atomic_copy(final / name, run / name)
    for old in checkpoint_dirs(run)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


SHARDED = "sharded"


def is_sharded(checkpoint: Path) -> bool:
    return (checkpoint / SHARDED).is_dir()


def save_sharded_checkpoint(run: Path, model, optimizer, run_config: dict, train_state: dict, step: int,
                            keep: int, consolidated=None) -> Path:
    """A checkpoint of an FSDP run; every process calls this. Each process writes its shards of the
    model and optimizer (torch.distributed.checkpoint, into a temp folder); rank 0 adds config,
    train_state.pt and, given `consolidated` (an unsharded copy of the model, see
    train/distributed.py), model.safetensors written by its save_pretrained (tied weights once,
    frozen backbone weights left to their folders, backbones.json), then renames the folder: as
    atomic as `save_checkpoint`. The folder must be visible to every
    process (one machine, or a shared file system)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    main = dist.get_rank() == 0
    root = run / "checkpoints"
    final, tmp = root / f"step_{step:08d}", root / f".step_{step:08d}.tmp"
    if main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp / SHARDED)
    dist.barrier()
    if main:
        (tmp / "config.json").write_text(json.dumps(run_config, indent=2, sort_keys=True))
        torch.save(train_state, tmp / "train_state.pt")
        if consolidated is not None:
            consolidated.save_pretrained(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for name in ("config.json", "model.safetensors", "train_state.pt", "backbones.json"):
            if (final / name).exists():
                _atomic_copy(final / name, run / name)
            elif name != "backbones.json":  # no consolidated weights at this save: do not leave older ones beside a newer state
                (run / name).unlink(missing_ok=True)
        for old in checkpoint_dirs(run)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def load_sharded_checkpoint(checkpoint: Path, model, optimizer) -> None:
    """Load an FSDP checkpoint into a sharded model and its optimizer, whatever the number of
    processes that wrote it (torch.distributed.checkpoint reshards by parameter name)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)  # the targets, in this run's sharding
    # get_state_dict gives every parameter an AdamW state; a parameter that never had a gradient
    # (the mask token when mask_ratio is 0) has none in the checkpoint, and must have none after.
    saved = dcp.FileSystemReader(str(checkpoint / SHARDED)).read_metadata().state_dict_metadata
    optim_state["state"] = {name: s for name, s in optim_state["state"].items()
                            if all(f"optimizer.state.{name}.{key}" in saved for key in s)}
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=checkpoint / SHARDED)
    # strict=False only admits those stateless parameters: dcp.load above already failed on any
    # model or optimizer tensor missing from the checkpoint
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(strict=False))


def consolidate(checkpoint: str | Path, out: str | Path | None = None) -> Path:
    """Write one model.safetensors (+ config.json) from a sharded checkpoint, in one process and
    without a process group: for `Mirasol.from_pretrained` when the run saved without
    `train.save_consolidated`. Needs the whole model in CPU memory. Returns the folder written."""
    import torch.distributed.checkpoint as dcp

    checkpoint = Path(checkpoint)
    if not is_sharded(checkpoint):
        raise FileNotFoundError(f"{checkpoint / SHARDED} not found: not a checkpoint of a train.strategy=fsdp run")
    run_cfg = load_run_config(checkpoint)
    model = Mirasol.build(run_cfg.model, run_cfg.train.freeze, run_cfg.train.lora)
    state = {"model": model.state_dict()}
    with warnings.catch_warnings():  # "no process group: loading in a single process" is the point here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=checkpoint / SHARDED)
    model.load_state_dict(state["model"])
    out = Path(out) if out else checkpoint
    if out != checkpoint:
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(checkpoint / "config.json", out / "config.json")
    model.save_pretrained(out)
    return out




def latest_checkpoint(run: Path) -> Path | None:
    dirs = checkpoint_dirs(run)
    return dirs[-1] if dirs else None


def load_train_state(checkpoint: Path) -> dict:
    """The optimizer, scheduler, step and RNG state. Loaded with weights_only=True: a file holding
    anything but tensors, numbers and containers is refused, since unpickling it could run code."""
    file = checkpoint / "train_state.pt"
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
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
    # the optimizer's state of a train.strategy=fsdp checkpoint is in its sharded/ files instead
    needed = ["step", "scheduler", "rng"] + ([] if is_sharded(checkpoint) else ["optimizer"])
    missing = [k for k in needed if not isinstance(state, dict) or k not in state]
    if missing:
        what = "" if isinstance(state, dict) else f" (it holds a {type(state).__name__}, not a dict)"
        raise CheckpointError(
            f"{file} lacks the key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} that "
            f"--resume needs{what}, so it was not written by `mirasol train`: delete {checkpoint} to resume "
            f"from the checkpoint before it, or start a new run")
    return state
