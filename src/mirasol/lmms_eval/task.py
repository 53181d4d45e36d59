"""An lmms-eval task over a mirasol manifest, which runs offline (docs/lmms-eval.md).

    mirasol lmms-task data/test.jsonl --out tasks/        # writes tasks/mirasol_test{,_free,_choice}.*
    lmms-eval --model mirasol --model_args run=RUN --tasks mirasol_test --include_path tasks/

`write_task` writes the manifest's rows (video paths made absolute) as two local JSON Lines files,
free answers and multiple choice, and three task files: the two halves, each including a copy of
the packaged template of its kind (tasks/_mirasol_free.yaml, tasks/_mirasol_choice.yaml) written
next to it and named relatively, so the folder stays valid wherever mirasol is installed or the
folder is moved; and their group. The functions below are the templates' document hooks. Importing this module needs neither torch nor
lmms-eval.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from mirasol.data.manifest import normalize_answer, prompt_for, read_manifest

TEMPLATES = Path(__file__).resolve().parent / "tasks"


# --- the templates' hooks: a document is one manifest row (write_task's format) ----------------
def doc_to_visual(doc: dict) -> list[str]:
    return [doc["video"]]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return prompt_for(doc["task"], doc.get("question"))


def doc_to_target(doc: dict) -> str:
    return doc["answer"]


def doc_to_choice(doc: dict) -> list[str]:
    return list(doc["choices"])


def process_results(doc: dict, results: list[str]) -> dict:
    """Normalised exact match (manifest.normalize_answer), the accuracy of `mirasol evaluate`."""
    return {"exact_match": float(normalize_answer(results[0]) == normalize_answer(doc["answer"]))}


# --- writing a task ------------------------------------------------------------------------------
def task_name(manifest: str | Path) -> str:
    """mirasol_<manifest file name>, in the letters lmms-eval's task names use."""
    return "mirasol_" + re.sub(r"[^0-9A-Za-z_]+", "_", Path(manifest).stem).strip("_").lower()


def _row(s) -> dict:
    return {"id": s.id, "video": s.video, "start": s.start, "end": s.end, "task": s.task, "question": s.question,
            "answer": s.answer, "choices": s.choices, "type": s.type}


def write_task(manifest: str | Path, out: str | Path, name: str | None = None) -> dict:
    """Write the lmms-eval task of `manifest` into the folder `out` (lmms-eval's --include_path).
    Returns {"name", "tasks": {half: task name}, "rows": {half: rows}, "files": [paths written]}."""
    samples = read_manifest(manifest)  # a bad row stops here, naming its line
    name = name or task_name(manifest)
    if not re.fullmatch(r"[A-Za-z][0-9A-Za-z_]*", name):
        raise ValueError(f"task name {name!r}: use letters, digits and underscores, starting with a letter")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    halves = {"free": [s for s in samples if not s.choices], "choice": [s for s in samples if s.choices]}
    written, tasks = [], {}
    for half, rows in halves.items():
        if not rows:
            continue
        task = f"{name}_{half}"
        data = out / f"{task}.jsonl"
        data.write_text("".join(json.dumps(_row(s), ensure_ascii=False) + "\n" for s in rows))
        config = out / f"{task}.yaml"
        template = out / f"_mirasol_{half}.yaml"  # lmms-eval resolves a relative include in the task's folder
        shutil.copyfile(TEMPLATES / template.name, template)
        config.write_text(f"# lmms-eval task: the {half}-answer rows of {Path(manifest).name} (written by "
                          f"`mirasol lmms-task`)\ninclude: {json.dumps(template.name)}\ntask: {task}\n"
                          f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(data.name)}\n")
        written += [data, template, config]
        tasks[half] = task
    group = out / f"{name}.yaml"
    group.write_text(f"# lmms-eval group: every row of {Path(manifest).name}\ngroup: {name}\ntask:\n"
                     + "".join(f"  - {t}\n" for t in tasks.values()))
    return {"name": name, "tasks": tasks, "rows": {h: len(r) for h, r in halves.items()}, "files": written + [group]}
