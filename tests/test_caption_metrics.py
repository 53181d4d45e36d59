import math
import random

import pytest

from mirasol.eval.caption_metrics import caption_scores, cider_d, corpus_bleu, tokenize_caption

REFS = [
    ["a man is riding a horse on the beach"],
    ["two dogs play with a red ball in the park"],
    ["a woman is cooking pasta in a small kitchen"],
    ["children are swimming in a blue pool"],
]
PERFECT = [r[0] for r in REFS]


def test_tokenize():
    assert tokenize_caption("A man, riding a HORSE.") == ["a", "man", "riding", "a", "horse"]
    assert tokenize_caption("A well-known man's dog!") == ["a", "well", "known", "mans", "dog"]
    assert tokenize_caption("") == []
    assert tokenize_caption(" ... ") == []


def test_perfect_predictions():
    s = caption_scores(PERFECT, REFS)
    for k in ("bleu1", "bleu2", "bleu3", "bleu4"):
        assert s[k] == pytest.approx(1.0)
    # one reference each, all n-gram orders present with nonzero IDF -> cosine 1 everywhere -> 10
    assert s["cider"] == pytest.approx(10.0)
    # punctuation / case do not matter
    assert corpus_bleu([p.upper() + "." for p in PERFECT], REFS)["bleu4"] == pytest.approx(1.0)


def test_no_shared_word_scores_zero():
    preds = ["xylophone quartz zebra jump"]
    refs = [["the cat is on the mat"]]
    assert all(v == 0.0 for v in corpus_bleu(preds, refs).values())
    preds = ["xylophone quartz zebra jump"] + PERFECT[1:]
    per_corpus_wrong = cider_d(preds, REFS)
    # sample 0 contributes 0: the corpus mean is the mean of the 3 perfect ones (10 each) over 4
    assert per_corpus_wrong == pytest.approx(10.0 * 3 / 4)


def test_bleu_clipping_and_brevity_by_hand():
    # clipping: "the" occurs 4 times in the candidate but at most 2 times in the reference
    s = corpus_bleu(["the the the the"], [["the cat is on the mat"]])
    p1 = 2 / 4
    bp = math.exp(1 - 6 / 4)  # candidate (4) shorter than reference (6)
    assert s["bleu1"] == pytest.approx(bp * p1)
    assert s["bleu2"] == 0.0  # "the the" never occurs in the reference, no smoothing
    assert s["bleu4"] == 0.0


def test_bleu2_by_hand():
    s = corpus_bleu(["the cat sat on the mat"], [["the cat is on the mat"]])
    p1 = 5 / 6  # all but "sat"
    p2 = 3 / 5  # "the cat", "on the", "the mat" out of 5 bigrams
    assert s["bleu1"] == pytest.approx(p1)  # same length -> BP = 1
    assert s["bleu2"] == pytest.approx(math.sqrt(p1 * p2))
    assert s["bleu4"] == 0.0  # no 4-gram match


def test_brevity_penalty():
    s = corpus_bleu(["the cat"], [["the cat is on the mat"]])
    assert s["bleu1"] == pytest.approx(math.exp(1 - 6 / 2))
    assert s["bleu2"] == pytest.approx(math.exp(1 - 6 / 2))
    # closest reference length: 4-token candidate vs refs of 3 and 6 tokens -> r = 3 -> no penalty
    s = corpus_bleu(["a b c d"], [["a b c", "a b c d e f"]])
    assert s["bleu1"] == pytest.approx(1.0)
    # tie (3 and 5 both 1 away from 4) goes to the shorter one -> no penalty
    s = corpus_bleu(["a b c d"], [["a b c", "a b c d e"]])
    assert s["bleu1"] == pytest.approx(1.0)
    s = corpus_bleu(["a b c d"], [["a b c d e f"]])
    assert s["bleu1"] == pytest.approx(math.exp(1 - 6 / 4))


def test_bleu_is_corpus_level():
    preds = ["the cat sat on the mat", "a dog"]
    refs = [["the cat sat on the mat"], ["a dog runs in the park"]]
    # counts are pooled: p1 = 8/8, c = 8, r = 6 + 6
    assert corpus_bleu(preds, refs)["bleu1"] == pytest.approx(math.exp(1 - 12 / 8))


def test_multiple_references_clip_by_max():
    # "the" may count twice because the second reference has it twice
    s = corpus_bleu(["the the cat"], [["the cat", "the big the"]])
    assert s["bleu1"] == pytest.approx(1.0)  # 3/3 correct, closest ref length 3


def test_cider_by_hand():
    refs = [["a b"], ["c d"]]
    # perfect 2-token captions: orders 1 and 2 give cosine 1, orders 3 and 4 have no n-grams
    assert cider_d(["a b", "c d"], refs) == pytest.approx(10 * (1 + 1 + 0 + 0) / 4)
    # extra word "e" (unseen in refs, idf log 2): every weight equals log 2, length differs by 1
    pen = math.exp(-1 / (2 * 6.0 ** 2))
    s0 = 10 * (2 / math.sqrt(6) + 1 / math.sqrt(2)) * pen / 4
    assert cider_d(["a b e", "c d"], refs) == pytest.approx((s0 + 5.0) / 2)


def test_cider_clipping():
    # "a a" vs "a": vectors are parallel (cosine 1 without clipping); clipping halves the dot
    pen = math.exp(-1 / (2 * 6.0 ** 2))
    expected = 10 * (0.5 * pen) / 4
    assert cider_d(["a a", "b"], [["a"], ["b"]]) == pytest.approx((expected + 10 * 1 / 4) / 2)


def test_cider_closer_is_higher():
    close = ["a man rides a horse on the beach"] + PERFECT[1:]
    far = ["a dog sleeps on a couch"] + PERFECT[1:]
    assert cider_d(close, REFS) > cider_d(far, REFS) > 0
    assert cider_d(PERFECT, REFS) > cider_d(close, REFS)


def test_empty_prediction():
    s = caption_scores([""], [["the cat is on the mat"]])
    assert all(v == 0.0 for v in s.values())
    s = caption_scores(["", "..."] + PERFECT[2:], REFS)
    assert all(math.isfinite(v) for v in s.values())
    assert s["cider"] == pytest.approx(10.0 * 2 / 4)
    assert all(v == 0.0 for v in caption_scores([], []).values())


def test_single_sample():
    s = caption_scores(["a man is riding a horse"], [["a man is riding a horse", "a person on a horse"]])
    assert s["bleu4"] == pytest.approx(1.0)
    assert s["cider"] == 0.0  # IDF over a 1-sample corpus is log(1) = 0 everywhere (toolkit behaviour)


def test_order_invariance():
    preds = ["a man rides a horse", "dogs play with a ball", "a woman cooks", "kids swim in a pool"]
    refs = [r + ["an extra reference caption"] for r in REFS]
    base = caption_scores(preds, refs)
    idx = list(range(len(preds)))
    random.Random(0).shuffle(idx)
    shuffled = caption_scores([preds[i] for i in idx], [refs[i] for i in idx])
    assert shuffled == pytest.approx(base)


def test_length_mismatch_and_missing_refs():
    with pytest.raises(ValueError):
        corpus_bleu(["a"], [])
    with pytest.raises(ValueError):
        cider_d(["a"], [[]])
