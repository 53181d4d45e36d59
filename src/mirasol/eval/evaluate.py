"""`mirasol evaluate`: a trained run + a manifest -> the evaluation report (DESIGN.md).

Deterministic: greedy decoding, best-scoring choice when a row has `choices`, closed-set scoring
for `classify` (labels seen in training). Accuracy is normalised exact match
(`manifest.normalize_answer`), overall and per `type` (rows without one are grouped by task),
next to the answer-prior baseline: always answering the most frequent training answer of that
type. Caption rows also get corpus BLEU and CIDEr-D.
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from mirasol.data.cache import ClipCache, default_cache_dir, prepare, print_report, require_clips
from mirasol.data.dataset import ClipDataset, collate
from mirasol.datasets.manifest import family, normalize_answer, read_manifest
from mirasol.eval.predict import predict
from mirasol.run_dir import load_run


def evaluate(run: str | Path, manifest: str | Path, out: str | Path, batch_size: int = 32,
             cache: str | Path | None = None, progress: bool = True) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, stats, run_cfg = load_run(run, device)
    samples = read_manifest(manifest)
    store = run_cfg.data.store  # the run's store format (auto unless it was trained with another)
    cache_dir = Path(cache) if cache else default_cache_dir(manifest, model.cfg, store)
    report_prep = prepare([manifest], cache_dir, model.cfg, workers=run_cfg.data.prepare_workers, progress=progress,
                          store=store)
    print_report(report_prep, cache_dir)
    require_clips(report_prep, manifest, cache_dir)
    max_len = run_cfg.data.max_text_len or model.cfg.max_text_len
    dataset = ClipDataset(samples, ClipCache(cache_dir, model.cfg, store=store), tokenizer, max_len)

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
            items = [dataset[i] for i in order[start:start + batch_size]]
            batch = collate(items, tokenizer.pad_id)
            batch_samples = [dataset.samples[i] for i in batch["index"].tolist()]
            answers = predict(model, tokenizer, batch["video"].to(device), batch["audio"].to(device),
                              batch["prompt_ids"].to(device), batch_samples, labels=stats.get("labels"),
                              media_index=batch["media_index"].to(device),
                              chunk_mask=batch["chunk_mask"].to(device))
            for i, s, answer in zip(batch["index"].tolist(), batch_samples, answers):
                rows[i] = {"id": s.id, "type": family(s), "task": s.task, "question": s.question,
                           "answer": s.answer, "prediction": answer,
                           "correct": normalize_answer(answer) == normalize_answer(s.answer)}
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


def summarize(rows: list[dict], answer_prior: dict[str, str]) -> dict:
    """Accuracy overall and per type, with the answer-prior baseline of each."""
    by_type: dict[str, list[dict]] = collections.defaultdict(list)
    for r in rows:
        by_type[r["type"]].append(r)
    types = {}
    prior_hits = 0
    for name in sorted(by_type):
        group = by_type[name]
        prior = answer_prior.get(name)
        hits = sum(prior is not None and normalize_answer(r["answer"]) == prior for r in group)
        prior_hits += hits
        types[name] = {"n": len(group), "accuracy": sum(r["correct"] for r in group) / len(group),
                       "answer_prior": hits / len(group)}
    n = len(rows)
    return {"n": n, "accuracy": sum(r["correct"] for r in rows) / n if n else 0.0, "by_type": types,
            "baselines": {"answer_prior": prior_hits / n if n else 0.0}}


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


def cli_evaluate(args) -> int:
    report = evaluate(args.run, args.manifest, args.out)  # input errors: printed by mirasol.cli.main
    print(format_table(report))
    print(f"report: {args.out}  predictions: {Path(args.out).with_name(report['predictions'])}")
    return 0
