"""Batched answering (serve/batcher.py): questions answered together, with different settings and
about videos of different lengths, get exactly the answers they get one at a time."""

from __future__ import annotations

import threading
import time

import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")

from mirasol.serve.batcher import Batcher, Request, answer_batch, answer_questions  # noqa: E402
from mirasol.serve.evidence import answer as answer_alone  # noqa: E402
from mirasol.serve.service import Service  # noqa: E402
from serve_testing import make_varied_run, synthetic_video  # noqa: E402

QUESTIONS = [None, "what is cooked?", "what color is the square?", "what shape is the object?",
             "describe the video", "red"]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_batch")
    svc = Service(make_varied_run(root / "run"), root / "cache", batch_window_s=0.2, max_batch=8)
    ids = [svc.submit_file(synthetic_video(root / name, seconds), name, owned=False)["id"]
           for name, seconds in (("short.mp4", 2.0), ("long.mp4", 3.5))]
    deadline = time.monotonic() + 120
    while any(svc.status(i)["state"] not in ("ready", "failed") for i in ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [svc.status(i)["state"] for i in ids] == ["ready", "ready"]
    svc.video_ids = ids
    yield svc
    svc.batcher.close()


def latents(service, video_id: str, kind: str = "full") -> torch.Tensor:
    return service.cache.get(video_id)[0][kind]


def alone(service, request: Request) -> str:
    """The unbatched answer: the path `mirasol ask` and `evaluate` take, one question at a time."""
    return answer_alone(service.model, service.tokenizer, request.latents[None], request.question,
                        list(request.choices) if request.choices else None, request.max_new_tokens)


def mixed_requests(service) -> list[Request]:
    requests = []
    for i, question in enumerate(QUESTIONS):
        for j, video_id in enumerate(service.video_ids):
            lat = latents(service, video_id)
            requests.append(Request(lat, question, None, 2 + (i + j) % 5, key=video_id))  # one memory row per video
            requests.append(Request(lat, question, ("red", "green") if i % 2 else ("a pancake", "an egg"), 3))
    return requests


def test_a_batch_answers_exactly_as_one_at_a_time(service):
    short, long = (latents(service, v) for v in service.video_ids)
    assert short.shape[0] != long.shape[0]  # memory padding and its mask are exercised
    requests = mixed_requests(service)
    batched = answer_batch(service.model, service.tokenizer, requests)
    assert [a.text for a in batched] == [alone(service, r) for r in requests]
    free = [(a, r) for a, r in zip(batched, requests) if not r.choices]
    assert len({a.text for a, _ in free}) > 3  # answers differ between rows, so equality says something
    assert len({a.text for a, r in zip(batched, requests) if r.choices}) > 1
    for a, r in free:  # each row is cut at its own budget
        assert a.tokens <= r.max_new_tokens
        assert (a.finish_reason == "length") == (a.tokens == r.max_new_tokens)


def test_answer_questions_is_one_pass_with_the_same_answers(service):
    lat = latents(service, service.video_ids[1])
    got = answer_questions(service.model, service.tokenizer, lat, QUESTIONS, max_new_tokens=4)
    assert got == [alone(service, Request(lat, q, None, 4)) for q in QUESTIONS]
    choices = ["a pancake", "an egg"]
    got = answer_questions(service.model, service.tokenizer, lat[None], QUESTIONS, choices=choices)
    assert got == [alone(service, Request(lat, q, tuple(choices))) for q in QUESTIONS]


def test_concurrent_asks_share_passes_and_keep_their_answers(service):
    """Threads asking at once (as HTTP clients do) are answered in shared passes, each with the
    answer it gets alone, the controls included."""
    asks = [(v, q, k) for k, q in enumerate(QUESTIONS) for v in service.video_ids]
    before = service.batcher.stats()
    results: dict[int, dict] = {}
    start = threading.Barrier(len(asks))

    def ask(i, video_id, question, budget):
        start.wait()
        results[i] = service.ask(video_id, question, evidence=False, modalities=True, max_new_tokens=1 + budget)

    threads = [threading.Thread(target=ask, args=(i, *a)) for i, a in enumerate(asks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    after = service.batcher.stats()
    assert after["answered"] - before["answered"] == 3 * len(asks)  # each ask: the answer and two controls
    assert after["batches"] - before["batches"] < 3 * len(asks) and after["largest_batch"] > 1
    for i, (video_id, question, budget) in enumerate(asks):
        for key, kind in (("answer", "full"), ("without_audio", "no_audio"), ("without_video", "no_video")):
            want = alone(service, Request(latents(service, video_id, kind), question, None, 1 + budget))
            assert results[i][key] == want, (i, key)


def test_batches_are_bounded_and_a_bad_request_fails_alone(service):
    lat = latents(service, service.video_ids[0])
    batcher = Batcher(service.model, service.tokenizer, window_s=0.5, max_batch=3)
    try:
        futures = batcher.submit([Request(lat, q, None, 3) for q in QUESTIONS] + [Request(lat, "x", None, 3)])
        [f.result(60) for f in futures]
        assert batcher.stats()["batches"] == 3 and batcher.stats()["largest_batch"] == 3
        broken = Request(torch.zeros(2, lat.shape[1], lat.shape[2] + 1), "what is cooked?", None, 3)
        good, bad, also_good = batcher.submit([Request(lat, "red", None, 3), broken, Request(lat, None, None, 3)])
        assert good.result(60).text == alone(service, Request(lat, "red", None, 3))
        assert also_good.result(60).text == alone(service, Request(lat, None, None, 3))
        with pytest.raises(RuntimeError):
            bad.result(60)
    finally:
        batcher.close()
    with pytest.raises(ValueError, match="batch size"):
        Batcher(service.model, service.tokenizer, max_batch=0)


def test_memory_rows_decode_as_repeated_memory(service):
    """generation's memory_rows (each clip's keys/values projected once, rows pointing at them)
    gives the tokens of the same memory repeated row by row, greedy and beam search."""
    from mirasol.serve.evidence import prompt_ids

    model = service.model
    clips = torch.stack([latents(service, service.video_ids[1]).flatten(0, 1),
                         torch.roll(latents(service, service.video_ids[1]), 1, dims=0).flatten(0, 1)])
    rows = torch.tensor([1, 0, 1, 1])
    prompts = torch.full((4, 16), model.cfg.pad_token_id, dtype=torch.long)
    for row, question in enumerate(("red", "what is cooked?", None, "describe the video")):
        ids = prompt_ids(model, service.tokenizer, question)[0]
        prompts[row, :len(ids)] = ids  # right-padded: generation repacks to the left
    for beams in (1, 3):
        shared = model.generate_from_latents(clips, prompts, 6, memory_rows=rows, num_beams=beams)
        repeated = model.generate_from_latents(clips[rows], prompts, 6, num_beams=beams)
        assert torch.equal(shared, repeated)
