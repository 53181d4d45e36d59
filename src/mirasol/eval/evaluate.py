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
from mirasol.errors import UsageError
from mirasol.eval.controls import check_control, perturb_chunks, perturb_media
from mirasol.eval.predict import answer_budget, answer_from_stream, predict
from mirasol.eval.scoring import score_rows, summarize
from mirasol.run_dir import load_run

__all__ = ["evaluate", "format_table", "summarize"]


def evaluate(run: str | Path, manifest: str | Path, out: str | Path, batch_size: int = 32,
             cache: str | Path | None = None, progress: bool = True, whole: bool = False,
             window: int | None = None, media: str | None = None, seed: int = 0, online: bool = False) -> dict:
    """`whole`: stream each row's whole video (or its [start, end]) chunk by chunk, as `mirasol ask
    --whole` does, whatever the run's training window; `window` W: the AV model attends to the
    last W chunks only. `media`: a test-time control (eval/controls.py: zero_audio, zero_video,
    zero_media, shuffle; `seed` draws the shuffles). `online`: rows with `at` answered from the
    video before `at` only, each video streamed once (eval/online.py)."""
    media = check_control(media)
    if window is not None and not (whole or online):
        raise UsageError("--window applies to streaming: add --whole or --online")
    if online and (whole or media != "none"):
        raise UsageError("--online streams every video itself: leave out --whole and --media")
    if window is not None and window < 1:
        raise UsageError(f"--window takes a number of chunks >= 1, got {window}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, stats, run_cfg = load_run(run, device)
    from mirasol.data.shards import is_shards, unpack

    if is_shards(manifest):  # evaluated by row: the shards' files and rows written out once (docs/shards.md)
        manifest = unpack(manifest)
    samples = read_manifest(manifest)
    generator = torch.Generator().manual_seed(seed)
    if online:
        from mirasol.eval.online import accuracy_over_time, answer_online

        rows, skipped = answer_online(model, tokenizer, stats, samples, window, device, progress)
        return _report(rows, stats, out, run, manifest, skipped,
                       {"whole": False, "window": window, "media": media, "online": accuracy_over_time(rows)})
    if whole:
        rows, skipped = _answer_whole(model, tokenizer, stats, samples, window, media, generator, device, progress)
        return _report(rows, stats, out, run, manifest, skipped, {"whole": True, "window": window, "media": media})
    # the run's store format (auto unless it was trained with another)
    cache_dir = Path(cache) if cache else default_cache_dir(manifest, model.cfg, run_cfg.data.store)
    ready_clips([manifest], cache_dir, run_cfg.data, model.cfg, progress=progress)
    dataset = open_dataset(samples, cache_dir, run_cfg.data, model.cfg, tokenizer)
    # Rows about one clip are answered in the same batch, so the clip is encoded once (a manifest
    # need not list them together); predictions.jsonl keeps the manifest's order.
    order = sorted(range(len(dataset)), key=lambda i: dataset.clip_ids[i])
    rows: list[dict] = [{} for _ in range(len(dataset))]
    with torch.no_grad():
        for start in tqdm(range(0, len(dataset), batch_size), desc="evaluating", unit="batch",
                          disable=not progress, file=sys.stderr):
            batch = collate([dataset[i] for i in order[start:start + batch_size]], tokenizer.pad_id)
            batch_samples = [dataset.samples[i] for i in batch["index"].tolist()]
            video, audio, mask = perturb_media(batch["video"], batch["audio"], batch["chunk_mask"], model.cfg,
                                               media, generator)
            answers = predict(model, tokenizer, video.to(device), audio.to(device),
                              batch["prompt_ids"].to(device), batch_samples, labels=stats.get("labels"),
                              max_new_tokens=answer_budget(stats),
                              media_index=batch["media_index"].to(device), chunk_mask=mask.to(device))
            for i, row in zip(batch["index"].tolist(), score_rows(batch_samples, answers)):
                rows[i] = row
    return _report(rows, stats, out, run, manifest, dataset.skipped, {"whole": False, "window": None, "media": media})


def _report(rows: list[dict], stats: dict, out: str | Path, run, manifest, skipped: int, how: dict) -> dict:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    predictions_file = out.with_name("predictions.jsonl")
    with open(predictions_file, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")

    report = summarize(rows, stats.get("answer_prior", {}))
    report["predictions"] = predictions_file.name
    report["skipped"] = skipped
    report.update(how)
    report["run"] = str(run)
    report["manifest"] = str(manifest)
    captions = [r for r in rows if r["task"] == "caption"]
    if captions:
        from mirasol.eval.caption_metrics import caption_scores

        report["caption"] = caption_scores([r["prediction"] for r in captions], [[r["answer"]] for r in captions])
    out.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return report


def _answer_whole(model, tokenizer, stats, samples, window, media, generator, device, progress):
    """Each clip streamed whole (media/chunk_reader.iter_chunks into Mirasol.stream), then all its
    rows answered from the stream's latents. -> (rows in manifest order, rows skipped)."""
    from mirasol.media.chunk_reader import iter_chunks
    from mirasol.media.decode import MediaError

    by_clip: dict[tuple, list[int]] = {}
    for i, s in enumerate(samples):
        by_clip.setdefault((s.video, s.start, s.end), []).append(i)
    rows: list[dict | None] = [None] * len(samples)
    with torch.no_grad():
        for (video, start, end), index in tqdm(by_clip.items(), desc="streaming clips", unit="clip",
                                               disable=not progress, file=sys.stderr):
            try:
                chunks = [(c.video, c.audio) for c in iter_chunks(video, model.cfg, start=start or 0.0, end=end)]
            except MediaError as err:
                print(f"skipping {video}: {err}", file=sys.stderr)
                continue
            session = model.stream(max_context_chunks=window)
            for v, a in perturb_chunks(chunks, media, model.cfg, generator):
                session.push(v[None].to(device), a[None].to(device))
            batch_samples = [samples[i] for i in index]
            answers = answer_from_stream(model, tokenizer, stats, session, batch_samples, device)
            for i, row in zip(index, score_rows(batch_samples, answers)):
                rows[i] = row
    kept = [r for r in rows if r is not None]
    return kept, len(rows) - len(kept)


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
