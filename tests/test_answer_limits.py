"""Answers that stop where the run's training answers stop, and answers chosen among a question
family's training answers: recorded in train_stats.json by training, used by `ask` (batch and
streaming), `evaluate`, validation and the server."""

from __future__ import annotations

import json

import pytest

from mirasol.cli import main as cli
from mirasol.data.manifest import Sample
from mirasol.data.tokenizer import MirasolTokenizer
from mirasol.errors import UsageError
from mirasol.eval.predict import DEFAULT_ANSWER_TOKENS, answer_budget, family_answers
from mirasol.run_dir import train_stats

from conftest import make_run

TEXTS = ["what is cooked?", "a pancake", "one", "two", "three", "high", "low", "what pitch?", "how many?"]


def rows():
    return [Sample(id="a", video="v.mp4", task="qa", question="how many?", answer="two", type="count"),
            Sample(id="b", video="v.mp4", task="qa", question="how many?", answer="Three", type="count"),
            Sample(id="c", video="v.mp4", task="qa", question="how many?", answer="three", type="count"),
            Sample(id="d", video="v.mp4", task="qa", question="what pitch?", answer="high", type="pitch"),
            Sample(id="e", video="v.mp4", task="caption", answer="a pancake is cooked")]


def test_train_stats_record_the_longest_answer_and_each_familys_answers():
    tokenizer = MirasolTokenizer.train(TEXTS + ["a pancake is cooked"], vocab_size=300)
    stats = train_stats(rows(), tokenizer)
    longest = max(len(tokenizer.encode_answer(s.answer)) for s in rows())
    assert stats["max_answer_tokens"] == longest == len(tokenizer.encode_answer("a pancake is cooked"))
    assert stats["answers_by_family"]["count"] == ["Three", "two"]  # one spelling per normalised answer
    assert stats["answers_by_family"]["pitch"] == ["high"]
    assert answer_budget(stats) == longest and answer_budget({}) == DEFAULT_ANSWER_TOKENS
    assert family_answers(stats, "count") == ["Three", "two"]
    with pytest.raises(UsageError, match="no training answers of family 'colour'.*count, pitch"):
        family_answers(stats, "colour")
    with pytest.raises(UsageError, match="one answer in training"):
        family_answers(stats, "pitch")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An untrained tiny model (its free answers run on to any limit), with recorded stats."""
    stats = {"labels": [], "answer_prior": {}, "num_samples": 3, "max_answer_tokens": 2,
             "answers_by_family": {"count": ["one", "three", "two"]}}

    def silence_specials(model):  # pad, bos, eos, sep never win: free answers run on as a confused model's do
        model.text_decoder.embed.weight[:4] = 0.0

    return make_run(tmp_path_factory.mktemp("run"), TEXTS, stats, tokenizer_vocab=True, edit=silence_specials)


@pytest.mark.parametrize("stream", [False, True])
def test_free_answers_stop_at_the_longest_training_answer(run, capsys, media, stream):
    video = str(media.path("fits"))
    stats_file = run / "train_stats.json"
    original = stats_file.read_text()
    answers = {}
    try:
        for budget in (2, 12):  # 1 token + EOS, then 11 + EOS
            stats_file.write_text(json.dumps({**json.loads(original), "max_answer_tokens": budget}))
            assert cli(["ask", "--run", str(run), video, "how many?", *(["--whole"] if stream else [])]) == 0
            answers[budget] = capsys.readouterr().out.strip()
    finally:
        stats_file.write_text(original)
    # greedy decoding: the 2-token answer is the start of the 12-token one, which runs on further
    assert answers[2] and answers[12].replace(" ", "").startswith(answers[2].replace(" ", ""))
    assert len(answers[12]) > 2 * len(answers[2])


@pytest.mark.parametrize("stream", [False, True])
def test_ask_family_chooses_among_its_training_answers(run, capsys, media, stream):
    video = str(media.path("fits"))
    extra = ["--whole"] if stream else []
    assert cli(["ask", "--run", str(run), video, "how many?", "--family", "count", *extra]) == 0
    assert capsys.readouterr().out.strip() in {"one", "two", "three"}
    assert cli(["ask", "--run", str(run), video, "how many?", "--family", "colour", *extra]) == 2
    assert "no training answers of family 'colour'" in capsys.readouterr().err
