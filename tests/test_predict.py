"""`predict`: the one path from a batch to answers (validation, evaluate, ask)."""

import torch

from conftest import media_batch
from mirasol import Mirasol, MirasolConfig
from mirasol.data.manifest import Sample, prompt_text
from mirasol.data.tokenizer import MirasolTokenizer
from mirasol.eval import predict as predict_mod
from mirasol.eval.predict import predict
from mirasol.model import generation

LABELS = ["low square", "mid circle", "high triangle", "low circle"]


def setup():
    cfg = MirasolConfig.preset("tiny")
    torch.manual_seed(0)
    model = Mirasol(cfg).eval()
    samples = [
        Sample(id="c1", video="v", task="qa", question="which came first?", answer="beeps", choices=["beeps", "noise"]),
        Sample(id="k1", video="v", task="classify", answer="mid circle"),
        Sample(id="f1", video="v", task="qa", question="what color?", answer="red"),
        Sample(id="c2", video="v", task="qa", question="which came first?", answer="noise", choices=["beeps", "noise"]),
        Sample(id="c3", video="v", task="qa", question="what shape?", answer="circle",
               choices=["square", "circle", "triangle"]),
        Sample(id="k2", video="v", task="classify", answer="low circle"),
    ]
    texts = [prompt_text(s) for s in samples] + LABELS + ["beeps noise square circle triangle red"]
    tok = MirasolTokenizer.train(texts, vocab_size=300)
    prompts = [tok.encode_prompt(prompt_text(s), cfg.max_text_len) for s in samples]
    width = max(len(p) for p in prompts)
    prompt_ids = torch.tensor([[tok.pad_id] * (width - len(p)) + p for p in prompts])
    video, audio = media_batch(cfg, batch=3)
    media_index = torch.tensor([0, 1, 2, 0, 1, 2])
    return model, tok, samples, prompt_ids, video, audio, media_index


def count_scoring_calls(monkeypatch) -> list[int]:
    """Rows per score_candidates call (predict looks the function up when it runs)."""
    calls, original = [], generation.score_candidates
    monkeypatch.setattr(generation, "score_candidates", lambda *a, **kw: calls.append(len(a[1])) or original(*a, **kw))
    return calls


def test_options_rows_are_scored_in_batches_with_the_same_answers_as_one_by_one(monkeypatch):
    model, tok, samples, prompt_ids, video, audio, media_index = setup()
    calls = count_scoring_calls(monkeypatch)
    answers = predict(model, tok, video, audio, prompt_ids, samples, labels=LABELS, media_index=media_index)
    # three option sets: (beeps, noise) x 2 rows, the labels x 2 rows, (square, circle, triangle) x 1 row
    assert sorted(calls) == [1, 2, 2]
    options = [s.choices or (LABELS if s.task == "classify" else None) for s in samples]
    chosen = [i for i, o in enumerate(options) if o]
    free = [i for i, o in enumerate(options) if not o]
    assert chosen and free  # both kinds of row are checked
    for i in chosen:  # answered by scoring the options
        clip = media_index[i:i + 1]
        scores = model.score_candidates(video[clip], audio[clip], prompt_ids[i:i + 1],
                                        [tok.encode_candidates(options[i])], append_eos=False)
        assert answers[i] == options[i][int(scores[0].argmax())]
    for i in free:  # answered by generation
        clip = media_index[i:i + 1]
        out = model.generate(video[clip], audio[clip], prompt_ids[i:i + 1], max_new_tokens=24)
        assert answers[i] == tok.decode_answer(out[0].tolist())
    alone = [predict(model, tok, video, audio, prompt_ids[i:i + 1], [s], labels=LABELS,
                     media_index=media_index[i:i + 1])[0] for i, s in enumerate(samples)]
    assert alone == answers


def test_scoring_batches_are_capped(monkeypatch):
    model, tok, samples, prompt_ids, video, audio, media_index = setup()
    calls = count_scoring_calls(monkeypatch)
    monkeypatch.setattr(predict_mod, "MAX_SCORED_SEQUENCES", 2)  # one row of 2 choices per call
    capped = predict(model, tok, video, audio, prompt_ids, samples, labels=LABELS, media_index=media_index)
    assert sorted(calls) == [1, 1, 1, 1, 1]
    monkeypatch.setattr(predict_mod, "MAX_SCORED_SEQUENCES", 4096)
    assert capped == predict(model, tok, video, audio, prompt_ids, samples, labels=LABELS, media_index=media_index)
