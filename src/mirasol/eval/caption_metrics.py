"""Captioning metrics in pure Python: corpus BLEU-1..4 and CIDEr-D.

Both follow the conventions of the COCO caption evaluation toolkit, written here from the metric
definitions (Papineni et al. 2002 for BLEU; Vedantam et al. 2015 for CIDEr / CIDEr-D):

- Every caption (prediction and reference) goes through :func:`tokenize_caption` first.
- ``predictions[i]`` is scored against ``references[i]``, a list of one or more reference strings
  (a bare string is taken as a single reference).
- An empty prediction scores 0 and never raises; an empty corpus scores 0 everywhere.

Scores are on the usual scales: BLEU in [0, 1], CIDEr-D roughly in [0, 10] (the toolkit's x10).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

__all__ = ["tokenize_caption", "corpus_bleu", "cider_d", "caption_scores"]

_APOSTROPHES = re.compile(r"['\u2019`]")
_NON_WORD = re.compile(r"[^\w\s]|_")


def tokenize_caption(text: str) -> list[str]:
    """Lowercase, strip punctuation, split on whitespace.

    Apostrophes are deleted (``"man's" -> "mans"``, ``"don't" -> "dont"``); every other punctuation
    character (anything that is neither a letter/digit nor whitespace, plus ``_``) becomes a space,
    so ``"well-known"`` gives ``["well", "known"]``. ``None`` or an empty / punctuation-only string
    gives ``[]``. Applying it to already-tokenized text (joined with spaces) is a no-op.
    """
    if not text:
        return []
    text = _APOSTROPHES.sub("", str(text).lower())
    return _NON_WORD.sub(" ", text).split()


# ----------------------------------------------------------------------------------------------
# shared helpers


def _prepare(predictions: Sequence[str], references: Sequence[Sequence[str] | str]
             ) -> tuple[list[list[str]], list[list[list[str]]]]:
    if len(predictions) != len(references):
        raise ValueError(f"got {len(predictions)} predictions but {len(references)} reference lists")
    hyps, refs = [], []
    for i, (pred, ref_list) in enumerate(zip(predictions, references)):
        if isinstance(ref_list, str):
            ref_list = [ref_list]
        if len(ref_list) == 0:
            raise ValueError(f"sample {i} has no reference caption")
        hyps.append(tokenize_caption(pred))
        refs.append([tokenize_caption(r) for r in ref_list])
    return hyps, refs


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


# ----------------------------------------------------------------------------------------------
# BLEU


def corpus_bleu(predictions: Sequence[str], references: Sequence[Sequence[str] | str],
                max_n: int = 4) -> dict[str, float]:
    """Corpus-level BLEU-1..``max_n`` (keys ``"bleu1"`` .. ``f"bleu{max_n}"``).

    Conventions (those of the COCO toolkit, but without its tiny smoothing constants):

    - Modified n-gram precision with clipping: a predicted n-gram counts as correct at most as many
      times as it occurs in the single reference where it occurs most; correct counts and
      candidate n-gram counts (``max(0, len - n + 1)``) are summed over the whole corpus *before*
      dividing (corpus-level, not an average of sentence scores).
    - ``bleuN`` is the geometric mean of the precisions for n = 1..N (uniform weights), times the
      brevity penalty.
    - Brevity penalty: per sample the reference length closest to the prediction length is taken
      (ties go to the shorter reference); with ``c`` = total prediction length and ``r`` = total
      of those reference lengths, ``BP = 1`` if ``c > r`` else ``exp(1 - r / c)``.
    - No smoothing: if some order k <= N has no correct n-gram (or no candidate n-gram at all),
      ``bleuN`` is exactly 0. Empty predictions contribute length 0 and no n-grams.
    """
    if max_n < 1:
        raise ValueError("max_n must be >= 1")
    hyps, refs = _prepare(predictions, references)
    correct = [0] * max_n
    total = [0] * max_n
    hyp_len = ref_len = 0
    for hyp, ref_list in zip(hyps, refs):
        c = len(hyp)
        hyp_len += c
        ref_len += min((len(r) for r in ref_list), key=lambda l: (abs(l - c), l))
        for n in range(1, max_n + 1):
            hyp_counts = _ngrams(hyp, n)
            if not hyp_counts:
                continue
            max_ref: Counter = Counter()
            for r in ref_list:
                max_ref |= _ngrams(r, n)  # element-wise max over references
            correct[n - 1] += sum(min(cnt, max_ref[g]) for g, cnt in hyp_counts.items())
            total[n - 1] += c - n + 1

    scores: dict[str, float] = {}
    if hyp_len == 0:
        bp = 0.0
    elif hyp_len > ref_len:
        bp = 1.0
    else:
        bp = math.exp(1.0 - ref_len / hyp_len)
    log_sum = 0.0
    dead = False
    for n in range(1, max_n + 1):
        if dead or correct[n - 1] == 0 or total[n - 1] == 0:
            dead = True
            scores[f"bleu{n}"] = 0.0
            continue
        log_sum += math.log(correct[n - 1] / total[n - 1])
        scores[f"bleu{n}"] = bp * math.exp(log_sum / n)
    return scores


# ----------------------------------------------------------------------------------------------
# CIDEr-D


def _tfidf(counts: list[Counter], df: Counter, log_num_docs: float
           ) -> tuple[list[dict[tuple, float]], list[float]]:
    """Per order: n-gram -> raw count * (log N - log max(1, df)); and the vector's L2 norm."""
    vecs, norms = [], []
    for cnt in counts:
        vec = {g: tf * (log_num_docs - math.log(max(1.0, df[g]))) for g, tf in cnt.items()}
        vecs.append(vec)
        norms.append(math.sqrt(sum(v * v for v in vec.values())))
    return vecs, norms


def _cider_d_per_sample(hyps: list[list[str]], refs: list[list[list[str]]], n: int,
                        sigma: float) -> list[float]:
    if not hyps:
        return []
    ref_counts = [[[_ngrams(r, k) for k in range(1, n + 1)] for r in ref_list] for ref_list in refs]
    # document frequency: in how many *samples* (union of that sample's references) an n-gram occurs
    df: Counter = Counter()
    for per_ref in ref_counts:
        df.update({g for counts in per_ref for c in counts for g in c})
    log_num_docs = math.log(float(len(hyps)))

    scores = []
    for hyp, ref_list, per_ref in zip(hyps, refs, ref_counts):
        h_vecs, h_norms = _tfidf([_ngrams(hyp, k) for k in range(1, n + 1)], df, log_num_docs)
        total = 0.0
        for ref, r_counts in zip(ref_list, per_ref):
            r_vecs, r_norms = _tfidf(r_counts, df, log_num_docs)
            delta = float(len(hyp) - len(ref))
            penalty = math.exp(-(delta ** 2) / (2.0 * sigma ** 2))
            for k in range(n):
                if h_norms[k] == 0.0 or r_norms[k] == 0.0:
                    continue
                r_vec = r_vecs[k]
                # CIDEr-D clipping: a candidate n-gram's weight is capped by the reference's
                dot = sum(min(v, r_vec[g]) * r_vec[g] for g, v in h_vecs[k].items() if g in r_vec)
                total += penalty * dot / (h_norms[k] * r_norms[k])
        scores.append(10.0 * total / (n * len(ref_list)))
    return scores


def cider_d(predictions: Sequence[str], references: Sequence[Sequence[str] | str],
            n: int = 4, sigma: float = 6.0) -> float:
    """Corpus CIDEr-D (the "CIDEr" reported by the COCO toolkit): mean over samples of

        10 / (n * M) * sum_{refs j} sum_{k=1..n} exp(-(l_c - l_j)^2 / (2 sigma^2))
                       * <min(g_k(c), g_k(s_j)), g_k(s_j)> / (|g_k(c)| |g_k(s_j)|)

    where ``g_k`` is the TF-IDF vector of k-grams (TF = raw count, IDF = ``log(N / max(1, df))``),
    ``M`` the number of references of the sample and ``l`` token lengths. The norms are those of
    the unclipped vectors; an order with an all-zero vector on either side contributes 0.

    IDF is computed from the references of the evaluated corpus itself, as in the toolkit: ``N`` is
    the number of samples and ``df`` the number of samples whose references (taken together)
    contain the n-gram. Hence absolute values depend on the corpus: a 1-sample corpus always scores
    0 (every IDF is log 1 = 0), n-grams present in every sample's references get weight 0, and tiny
    corpora give odd values. Compare scores only on the same reference set.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    hyps, refs = _prepare(predictions, references)
    per_sample = _cider_d_per_sample(hyps, refs, n, sigma)
    return sum(per_sample) / len(per_sample) if per_sample else 0.0


def caption_scores(predictions: Sequence[str], references: Sequence[Sequence[str] | str]
                   ) -> dict[str, float]:
    """``{"bleu1", "bleu2", "bleu3", "bleu4", "cider"}`` for a corpus (cider = CIDEr-D)."""
    scores = corpus_bleu(predictions, references, max_n=4)
    scores["cider"] = cider_d(predictions, references)
    return scores
