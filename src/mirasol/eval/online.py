"""`mirasol evaluate --online`: rows with `at` answered from the video before `at` only, as a
viewer of a live stream would be asked (the streaming benchmarks' protocol, OVO-Bench and
StreamingBench).

Each video is streamed once, chunk by chunk, into the model's streaming session. Before a chunk
that would run past a row's `at` is pushed, the row is answered from the chunks pushed so far, so
the answer rests on whole chunks that end at or before `at` (a row whose `at` comes before the
first chunk ends cannot be answered that way and is skipped). Rows without `at` are answered at
the end of their video (or their `end`).

The report adds `online`: per family, accuracy by when the question was asked (the rows' `at`
in TIME_BINS equal parts of the longest `at`), so it shows how answers track time.
"""

from __future__ import annotations

import collections
import sys

import torch
from tqdm import tqdm

TIME_BINS = 4


def answer_online(model, tokenizer, stats, samples, window, device, progress) -> tuple[list[dict], int]:
    """-> (scored rows in manifest order, each with its `at`; rows skipped)."""
    from mirasol.eval.predict import answer_from_stream
    from mirasol.eval.scoring import score_rows
    from mirasol.media.chunk_reader import iter_chunks
    from mirasol.media.decode import MediaError

    by_video: dict[tuple, list[int]] = collections.defaultdict(list)
    for i, s in enumerate(samples):
        by_video[(s.video, s.start or 0.0)].append(i)
    rows: list[dict | None] = [None] * len(samples)
    cutoff = [s.at if s.at is not None else s.end for s in samples]  # None: the end of the video

    def answer(session, index: list[int]) -> None:
        batch = [samples[i] for i in index]
        answers = answer_from_stream(model, tokenizer, stats, session, batch, device)
        for i, row in zip(index, score_rows(batch, answers)):
            rows[i] = {**row, "at": samples[i].at}

    with torch.no_grad():
        for (video, start), index in tqdm(by_video.items(), desc="streaming clips", unit="clip",
                                          disable=not progress, file=sys.stderr):
            pending = sorted(index, key=lambda i: float("inf") if cutoff[i] is None else cutoff[i])
            last = None if any(cutoff[i] is None for i in index) else max(cutoff[i] for i in index)
            session = model.stream(max_context_chunks=window)
            try:
                for chunk in iter_chunks(video, model.cfg, start=start, end=last):
                    due = [i for i in pending if cutoff[i] is not None and cutoff[i] < chunk.end - 1e-6]
                    if due and session.chunks:
                        answer(session, due)
                    pending = [i for i in pending if i not in due]  # (due before any chunk: skipped)
                    if not pending:
                        break
                    session.push(chunk.video[None].to(device), chunk.audio[None].to(device))
            except MediaError as err:
                print(f"skipping {video}: {err}", file=sys.stderr)
                continue
            if pending and session.chunks:
                answer(session, pending)
    kept = [r for r in rows if r is not None]
    return kept, len(rows) - len(kept)


def accuracy_over_time(rows: list[dict], bins: int = TIME_BINS) -> dict:
    """{family: [{"at": [lo, hi], "n", "accuracy"}, ...]} over the rows that have `at`."""
    timed = [r for r in rows if r.get("at") is not None]
    if not timed:
        return {}
    longest = max(r["at"] for r in timed)
    width = longest / bins
    table: dict[str, dict[int, list[int]]] = collections.defaultdict(lambda: collections.defaultdict(lambda: [0, 0]))
    for r in timed:
        b = min(bins - 1, int(r["at"] / width - 1e-9)) if width > 0 else 0
        table[r["type"]][b][0] += bool(r["correct"])
        table[r["type"]][b][1] += 1
    return {name: [{"at": [round(b * width, 3), round((b + 1) * width, 3)], "n": n, "accuracy": hits / n}
                   for b, (hits, n) in sorted(per.items())]
            for name, per in sorted(table.items())}


def format_online(online: dict) -> str:
    """Lines of accuracy per family by when the question was asked."""
    lines = []
    for name, cells in online.items():
        parts = [f"{c['at'][0]:g}-{c['at'][1]:g}s {c['accuracy']:.2f} (n={c['n']})" for c in cells]
        lines.append(f"{name:<16}" + "  ".join(parts))
    return "\n".join(["accuracy by when asked (at):"] + lines) if lines else ""
