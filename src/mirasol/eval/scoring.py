"""Scoring answers, the same way for validation during training and for `mirasol evaluate`:
normalised exact match (`manifest.normalize_answer`), overall and per family (a row's `type`, or its
task without one), beside the answer-prior baseline."""

from __future__ import annotations

import collections

from mirasol.data.manifest import Sample, family, normalize_answer


def score_rows(samples: list[Sample], answers: list[str]) -> list[dict]:
    """One row per answer: what was asked, the reference, the prediction and whether it is correct."""
    return [{"id": s.id, "type": family(s), "task": s.task, "question": s.question, "answer": s.answer,
             "prediction": answer, "correct": normalize_answer(answer) == normalize_answer(s.answer)}
            for s, answer in zip(samples, answers)]


def accuracy_by_family(rows: list[dict]) -> dict[str, tuple[int, int]]:
    """family -> (correct, count)."""
    counts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for r in rows:
        counts[r["type"]][0] += bool(r["correct"])
        counts[r["type"]][1] += 1
    return {name: (hits, n) for name, (hits, n) in sorted(counts.items())}


def summarize(rows: list[dict], answer_prior: dict[str, str]) -> dict:
    """Accuracy overall and per type, with the answer-prior baseline of each (the report's core)."""
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
