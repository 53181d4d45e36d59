"""`mirasol export RUN --out DIR`: a trained run as a Hugging Face model folder.

    DIR/model.safetensors      the run's weights (safetensors, metadata format=pt)
    DIR/config.json            the run config (model/train/data), paths of the training machine cleared
    DIR/tokenizer.json         }  the tokenizer (Hugging Face `tokenizers` format; transformers'
    DIR/tokenizer_config.json  }  PreTrainedTokenizerFast reads it with its special tokens)
    DIR/train_stats.json       what answering needs from the training set (labels, answer lengths)
    DIR/backbones.json         runs with pretrained backbones: their folders' weight hashes
    DIR/eval_results.json      the evaluation reports the card's tables come from
    DIR/README.md              the model card (mirasol/model_card.py)

The folder is a run directory as far as reading goes: `Mirasol.from_pretrained(DIR)`, `mirasol ask
--run DIR`, `mirasol evaluate --run DIR` and lmms-eval's `run=DIR` read it, and so do they the Hub
repository it is uploaded to (mirasol/model/hub.py).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from mirasol.errors import UsageError

DATA_PATHS = ("cache", "tokenizer", "shard_text")  # data.* settings naming files of the training machine


def find_reports(run: Path) -> list[Path]:
    """Evaluation reports of `run`: report JSON files in it, beside it or one folder down from either,
    whose `run` field names this run (`mirasol evaluate` writes it; the quickstart's is beside its run)."""
    run = run.resolve()
    found = []
    for folder in (run, run.parent):
        for file in sorted([*folder.glob("*.json"), *folder.glob("*/*.json")]):
            try:
                report = json.loads(file.read_text())
            except (ValueError, UnicodeDecodeError, OSError):
                continue
            if isinstance(report, dict) and "by_type" in report and Path(str(report.get("run"))).resolve() == run:
                found.append(file)
    return list(dict.fromkeys(found))


def steps_trained(run: Path) -> int | None:
    """The last step in RUN/metrics.jsonl, else the latest checkpoint's; None when neither says."""
    from mirasol.run_dir import STEP_DIR, checkpoint_dirs

    metrics = run / "metrics.jsonl"
    if metrics.exists():
        steps = [json.loads(line).get("step", 0) for line in metrics.read_text().splitlines() if line.strip()]
        if steps:
            return max(steps)
    dirs = checkpoint_dirs(run)
    return int(STEP_DIR.match(dirs[-1].name).group(1)) if dirs else None


def _tokenizer_config(cfg) -> dict:
    """transformers' reading of tokenizer.json: the fast tokenizer class and the special tokens."""
    from mirasol.data.tokenizer import BOS, EOS, PAD, SEP

    if cfg.text_backbone:  # the backbone's own tokenizer: its specials are its own, named by id in config.json
        return {"tokenizer_class": "PreTrainedTokenizerFast"}
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
            "sep_token": SEP, "model_max_length": cfg.max_text_len}


def export(run: str | Path, out: str | Path, reports: list[str | Path] | None = None, name: str | None = None,
           license: str = "apache-2.0", log=sys.stderr) -> Path:
    """Write the model folder of `run` to `out` (which must not exist or be empty) and check that it
    loads. `reports`: evaluation reports for the card (default: those `find_reports` finds)."""
    from safetensors.torch import load_file, save_file

    from mirasol.model import Mirasol
    from mirasol.model_card import model_card
    from mirasol.run_dir import is_sharded, latest_checkpoint, load_train_stats, read_commands

    run, out = Path(run), Path(out)
    for needed in ("config.json", "tokenizer.json"):
        if not (run / needed).exists():
            raise FileNotFoundError(f"{run / needed} not found: is {run} a `mirasol train` run directory?")
    if not (run / "model.safetensors").exists():
        checkpoint = latest_checkpoint(run)
        hint = (f"write one with `mirasol consolidate {run} --out {run}`" if checkpoint and is_sharded(checkpoint)
                else "train it until its first checkpoint")
        raise FileNotFoundError(f"{run / 'model.safetensors'} not found: {hint}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} exists and is not empty; choose a new folder")
    report_files = [Path(r) for r in reports] if reports else find_reports(run)
    loaded = []
    for file in report_files:
        try:
            report = json.loads(Path(file).read_text())
        except ValueError as err:
            raise UsageError(f"--report {file}: not JSON ({err})") from None
        if not isinstance(report, dict) or "by_type" not in report:
            raise UsageError(f"--report {file}: not a `mirasol evaluate` report (no by_type)")
        loaded.append(report)

    out.mkdir(parents=True, exist_ok=True)
    run_cfg = json.loads((run / "config.json").read_text())
    if isinstance(run_cfg.get("data"), dict):
        for key in DATA_PATHS:
            run_cfg["data"][key] = None
    (out / "config.json").write_text(json.dumps(run_cfg, indent=2, sort_keys=True))
    save_file(load_file(str(run / "model.safetensors")), str(out / "model.safetensors"), metadata={"format": "pt"})
    for name_ in ("tokenizer.json", "train_stats.json", "backbones.json"):
        if (run / name_).exists():
            shutil.copyfile(run / name_, out / name_)
    if loaded:
        (out / "eval_results.json").write_text(json.dumps(loaded, indent=2, ensure_ascii=False))

    model = Mirasol.from_pretrained(out)  # the folder must load on its own before it is described
    (out / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(model.cfg), indent=2))
    backbones = json.loads((run / "backbones.json").read_text()) if (run / "backbones.json").exists() else None
    card = model_card(name or out.resolve().name, str(run), run_cfg, model.num_parameters(), load_train_stats(run),
                      steps_trained(run), read_commands(run), loaded, license=license, backbones=backbones)
    (out / "README.md").write_text(card)
    if log is not None:
        what = f"{len(loaded)} evaluation report(s)" if loaded else "no evaluation report (the card says how to add one)"
        print(f"wrote {out}: model.safetensors, config.json, tokenizer, README.md with {what}", file=log)
    return out
