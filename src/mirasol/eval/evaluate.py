"""`mirasol evaluate`: a trained run + a manifest -> the evaluation report (docs/design.md).

Deterministic: greedy decoding, best-scoring choice when a row has `choices`, closed-set scoring
for `classify` (labels seen in training). Accuracy is normalised exact match
(`manifest.normalize_answer`), overall and per `type` (rows without one are grouped by task),
next to the answer-prior baseline: always answering the most frequent training answer of that
type. Caption rows also get corpus BLEU and CIDEr-D.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from mirasol.data.cache import default_cache_dir
from mirasol.data.dataset import collate, open_dataset, ready_clips
from mirasol.data.manifest import read_manifest
from mirasol.eval.predict import predict
from mirasol.eval.scoring import score_rows, summarize
from mirasol.run_dir import load_run

__all__ = ["evaluate", "format_table", "summarize"]


def evaluate(run: str | Path, manifest: str | Path, out: str | Path, batch_size: int = 32,
             cache: str | Path | None = None, progress: bool = True) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, stats, run_cfg = load_run(run, device)
    from mirasol.data.shards import is_shards, unpack

    if is_shards(manifest):  # evaluated by row: the shards' files and rows written out once (docs/shards.md)
        manifest = unpack(manifest)
    samples = read_manifest(manifest)
    # the run's store format (auto unless it was trained with another)
    cache_dir = Path(cache) if cache else default_cache_dir(manifest, model.cfg, run_cfg.data.store)
    ready_clips([manifest], cache_dir, run_cfg.data, model.cfg, progress=progress)
    dataset = open_dataset(samples, cache_dir, run_cfg.data, model.cfg, tokenizer)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    predictions_file = out.with_name("predictions.jsonl")
    # Rows about one clip are answered in the same batch, so the clip is encoded once (a manifest
    # need not list them together); predictions.jsonl keeps the manifest's order.
    order = sorted(range(len(dataset)), key=lambda i: dataset.clip_ids[i])
    rows: list[dict] = [{} for _ in range(len(dataset))]
    with torch.no_grad():
        for start in tqdm(range(0, len(dataset), batch_size), desc="evaluating", unit="batch",
                          disable=not progress, file=sys.stderr):
            batch = collate([dataset[i] for i in order[start:start + batch_size]], tokenizer.pad_id)
            batch_samples = [dataset.samples[i] for i in batch["index"].tolist()]
            answers = predict(model, tokenizer, batch["video"].to(device), batch["audio"].to(device),
                              batch["prompt_ids"].to(device), batch_samples, labels=stats.get("labels"),
                              media_index=batch["media_index"].to(device),
                              chunk_mask=batch["chunk_mask"].to(device))
            for i, row in zip(batch["index"].tolist(), score_rows(batch_samples, answers)):
                rows[i] = row
    with open(predictions_file, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    report = summarize(rows, stats.get("answer_prior", {}))
    report["predictions"] = predictions_file.name
    report["skipped"] = dataset.skipped
    report["run"] = str(run)
    report["manifest"] = str(manifest)
    captions = [r for r in rows if r["task"] == "caption"]
    if captions:
        from mirasol.eval.caption_metrics import caption_scores

        report["caption"] = caption_scores([r["prediction"] for r in captions], [[r["answer"]] for r in captions])
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return report


def format_table(report: dict) -> str:
    lines = [f"{'type':<16}{'n':>6}{'accuracy':>10}{'prior':>8}{'gain':>8}"]
    for name, t in report["by_type"].items():
        lines.append(f"{name:<16}{t['n']:>6}{t['accuracy']:>10.3f}{t['answer_prior']:>8.3f}"
                     f"{t['accuracy'] - t['answer_prior']:>+8.3f}")
    lines.append(f"{'all':<16}{report['n']:>6}{report['accuracy']:>10.3f}"
                 f"{report['baselines']['answer_prior']:>8.3f}"
                 f"{report['accuracy'] - report['baselines']['answer_prior']:>+8.3f}")
    if "caption" in report:
        c = report["caption"]
        lines.append(f"captions: BLEU-4 {c['bleu4']:.3f}  CIDEr {c['cider']:.3f}")
    return "\n".join(lines)
