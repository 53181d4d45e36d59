"""Questions that arrive together are answered in one batched decoder pass.

`answer_batch` answers any list of requests (each: one video's cached chunk latents, a question,
optional choices, its own answer length) in one call: each video's latents are taken once
(questions about the same video share its cross-attention keys and values) and padded to the
longest, the padding hidden by the decoder's memory mask, the prompts are left-padded (the
decoder counts positions over real tokens only), free answers share one greedy decode run to the
longest budget and each row is cut at its own, and questions with choices are scored in one batch
per set of choices. Each answer is the one the same request gets alone (tests/test_serve_batch.py
checks it exactly).

`Batcher` is the queue in front of it that a server uses: a worker thread takes the first waiting
request, waits `window_s` (default 5 ms) for more to arrive, up to `max_batch`, and answers them
together under the model's lock; callers block on their own requests only. `answer_questions` is
the entry point for a caller with latents in hand ("answer these questions about this video").
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import torch

from mirasol.data.manifest import Sample, prompt_for
from mirasol.eval.predict import predict_from_memory

WINDOW_S = 0.005
MAX_BATCH = 32


@dataclass(frozen=True)
class Request:
    latents: torch.Tensor  # [T, m, D]: one video's chunk latents
    question: str | None  # None: a caption
    choices: tuple[str, ...] | None = None  # answer by the best-scoring of these
    max_new_tokens: int = 24  # free answers: at most this many tokens
    key: str | None = None  # names the latents (e.g. video id and kind): equal keys share one memory row


@dataclass(frozen=True)
class Answer:
    text: str
    tokens: int  # tokens of the answer (without its end token)
    finish_reason: str  # "stop": ended by the model (or a choice); "length": cut at max_new_tokens


def prompt_tokens(model, tokenizer, question: str | None) -> list[int]:
    """The prompt's token ids for a question (a caption's prompt for None), as `ask` builds it."""
    return tokenizer.encode_prompt(prompt_for("qa" if question else "caption", question), model.cfg.max_text_len)


def _pad_memory(latents: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[B, Tmax*m, D] memory and its mask (None when every video has the same number of chunks)."""
    lengths = [x.shape[0] * x.shape[1] for x in latents]
    width = max(lengths)
    flat = [x.flatten(0, 1) for x in latents]
    if all(n == width for n in lengths):
        return torch.stack(flat), None
    memory = flat[0].new_zeros(len(flat), width, flat[0].shape[-1])
    mask = torch.zeros(len(flat), width, dtype=torch.bool, device=memory.device)
    for row, (x, n) in enumerate(zip(flat, lengths)):
        memory[row, :n], mask[row, :n] = x, True
    return memory, mask


@torch.inference_mode()
def answer_batch(model, tokenizer, requests: list[Request]) -> list[Answer]:
    """The answers to `requests`, in order, from one padded batch (see the module's docstring)."""
    if not requests:
        return []
    device = next(model.parameters()).device
    slots: dict = {}  # each video's latents once; row i reads memory[video_row[i]]
    for r in requests:
        slots.setdefault(r.key if r.key is not None else id(r.latents), (len(slots), r.latents))
    video_row = torch.tensor([slots[r.key if r.key is not None else id(r.latents)][0] for r in requests],
                             device=device)
    videos, videos_mask = _pad_memory([x.to(device) for _, x in slots.values()])
    prompts = [prompt_tokens(model, tokenizer, r.question) for r in requests]
    ids = torch.full((len(prompts), max(map(len, prompts))), model.cfg.pad_token_id, dtype=torch.long, device=device)
    for row, p in enumerate(prompts):
        ids[row, :len(p)] = torch.tensor(p, device=device)
    answers: list[Answer | None] = [None] * len(requests)

    def rows(index: list[int]):
        at = video_row[torch.tensor(index, device=device)]
        return videos[at], ids[index], None if videos_mask is None else videos_mask[at]

    chosen = [i for i, r in enumerate(requests) if r.choices]
    if chosen:
        samples = [Sample(id=str(i), video="", task="qa" if requests[i].question else "caption", answer="",
                          question=requests[i].question, choices=list(requests[i].choices)) for i in chosen]
        mem, prompt_ids, mask = rows(chosen)
        for i, text in zip(chosen, predict_from_memory(model, tokenizer, mem, prompt_ids, samples, memory_mask=mask)):
            answers[i] = Answer(text, len(tokenizer.encode(text)), "stop")
    free = [i for i, r in enumerate(requests) if not r.choices]
    if free:
        at = video_row[free]
        budget = max(requests[i].max_new_tokens for i in free)
        out = model.generate_from_latents(videos, ids[free], budget, memory_rows=at,
                                          memory_mask=None if videos_mask is None else videos_mask[at])
        for i, row in zip(free, out.tolist()):
            row = row[:requests[i].max_new_tokens]  # greedy: a row's first k tokens do not depend on later ones
            stopped = tokenizer.eos_id in row
            text = tokenizer.decode_answer(row)
            tokens = row.index(tokenizer.eos_id) if stopped else len(row)
            answers[i] = Answer(text, tokens, "stop" if stopped else "length")
    return answers  # type: ignore[return-value]


def answer_questions(model, tokenizer, latents: torch.Tensor, questions: list[str | None],
                     choices: list[str] | None = None, max_new_tokens: int = 24) -> list[str]:
    """Answers to several questions about one video's latents [T, m, D] (or [1, T, m, D]), in one
    batched pass: the same answers as asking each alone."""
    latents = latents[0] if latents.dim() == 4 else latents
    options = tuple(choices) if choices else None
    return [a.text for a in answer_batch(model, tokenizer, [Request(latents, q, options, max_new_tokens)
                                                            for q in questions])]


@dataclass
class _Item:
    request: Request
    future: Future


class Batcher:
    """Answers requests from many threads in shared batches (module docstring). `lock` is held
    while the model runs (the server's model lock, shared with its encoder). Admission is bounded
    by the caller (the server's pending-question bound), so the queue itself is not."""

    def __init__(self, model, tokenizer, lock: threading.Lock | None = None, window_s: float = WINDOW_S,
                 max_batch: int = MAX_BATCH):
        if window_s < 0 or max_batch < 1:
            raise ValueError(f"the batch window must be >= 0 s and the batch size >= 1, got {window_s}, {max_batch}")
        self.model, self.tokenizer = model, tokenizer
        self.lock = lock or threading.Lock()
        self.window_s, self.max_batch = window_s, max_batch
        self.batches = 0  # decoder passes run
        self.answered = 0  # requests answered
        self.largest = 0  # the largest batch so far
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="mirasol-batcher", daemon=True)
        self._worker.start()

    def stats(self) -> dict:
        return {"batches": self.batches, "answered": self.answered, "largest_batch": self.largest,
                "window_ms": self.window_s * 1000, "max_batch": self.max_batch}

    def submit(self, requests: list[Request]) -> list[Future]:
        """Queue `requests` (together, so they share a batch where they fit); one future each."""
        items = [_Item(r, Future()) for r in requests]
        for item in items:
            self._queue.put(item)
        return [item.future for item in items]

    def answer(self, requests: list[Request]) -> list[Answer]:
        """Blocks until every request is answered; raises the first request's error, if any."""
        return [f.result() for f in self.submit(requests)]

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, deadline = [first], time.monotonic() + self.window_s
            while len(batch) < self.max_batch:
                try:  # after the window, still take what is already waiting
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self._answer(batch)
                    return
                batch.append(item)
            self._answer(batch)

    def _answer(self, batch: list[_Item]) -> None:
        try:
            with self.lock:
                answers = answer_batch(self.model, self.tokenizer, [item.request for item in batch])
        except Exception as error:
            if len(batch) == 1:
                batch[0].future.set_exception(error)
            else:  # answer each alone, so one bad request fails only itself
                for item in batch:
                    self._answer([item])
            return
        self._count(len(batch))
        for item, answer in zip(batch, answers):
            item.future.set_result(answer)

    def _count(self, size: int) -> None:
        self.batches += 1
        self.answered += size
        self.largest = max(self.largest, size)
