"""Answers from cached latents, and how much an answer rests on each time chunk.

The measure: **the drop in the answer's log-probability when the decoder may not read one chunk**
(occlusion). For chunk t the decoder's memory mask hides chunk t's m latents and the same answer
tokens (ending in EOS) are scored again; evidence[t] = log p(answer | all chunks) - log p(answer |
all but chunk t), in nats. All T masked copies are scored in one batch, so it costs about one more
decoder pass per chunk, with no re-encoding.

Why this and not the decoder's cross-attention mass per chunk: attention weights say where the
decoder looked, summed over heads and layers that may ignore what they read (and, with a gated
cross-attention, scaled by a gate), so they need not track what the answer depends on; the
occlusion drop measures the answer itself, in the unit the model is scored in, and a chunk whose
removal changes nothing gets zero. What it does not see: chunk t's content also reaches later
chunks' latents through the block-causal AV model, and hiding chunk t leaves that copy readable,
so a drop is a lower bound of the chunk's influence (the latents of later chunks are not
recomputed). Negative values mean the answer became more likely without the chunk.

Videos with many chunks are cut into at most MAX_SEGMENTS equal runs of chunks, each hidden as one.
"""

from __future__ import annotations

import torch

from mirasol.data.manifest import Sample
from mirasol.eval.predict import predict_from_memory
from mirasol.serve.batcher import prompt_tokens

MAX_SEGMENTS = 64
ROWS_PER_CALL = 32  # masked copies scored per decoder call (bounds memory on long videos)


def prompt_ids(model, tokenizer, question: str | None) -> torch.Tensor:
    return torch.tensor([prompt_tokens(model, tokenizer, question)])


def answer(model, tokenizer, latents: torch.Tensor, question: str | None, choices: list[str] | None = None,
           max_new_tokens: int = 24) -> str:
    """The answer about latents [1, T, m, D]: the best-scoring choice, or greedy decoding (a
    caption without a question), exactly as `mirasol ask` and `evaluate` answer."""
    task = "qa" if question else "caption"
    sample = Sample(id="serve", video="", task=task, answer="", question=question, choices=choices or None)
    [text] = predict_from_memory(model, tokenizer, latents, prompt_ids(model, tokenizer, question), [sample],
                                 max_new_tokens=max_new_tokens)
    return text


def segments(chunks: int, max_segments: int = MAX_SEGMENTS) -> list[tuple[int, int]]:
    """[(first, end)) runs of chunks hidden together: one per chunk up to max_segments."""
    n = min(chunks, max_segments)
    bounds = [round(i * chunks / n) for i in range(n + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(n)]


@torch.no_grad()
def chunk_evidence(model, tokenizer, latents: torch.Tensor, question: str | None, answer_text: str,
                   max_segments: int = MAX_SEGMENTS) -> dict:
    """{"measure", "base_logprob", "segments": [{"first_chunk", "end_chunk", "drop"}]} (chunks
    [first_chunk, end_chunk) hidden together) for latents [1, T, m, D]
    and the answer given. With one chunk there is nothing to compare with: drop is None."""
    t, m = latents.shape[1], latents.shape[2]
    ids = prompt_ids(model, tokenizer, question)
    candidate = tokenizer.encode_candidates([answer_text])  # answer tokens + EOS
    memory = model.decoder_memory(latents)  # [1, T*m, D]
    base = model.score_candidates_from_latents(memory, ids, [candidate], append_eos=False)[0, 0].item()
    runs = segments(t, max_segments)
    drops: list[float | None] = [None] * len(runs)
    if t > 1:
        for lo in range(0, len(runs), ROWS_PER_CALL):
            part = runs[lo:lo + ROWS_PER_CALL]
            mask = torch.ones(len(part), t * m, dtype=torch.bool, device=memory.device)
            for row, (first, end) in enumerate(part):
                mask[row, first * m:end * m] = False
            scores = model.score_candidates_from_latents(
                memory.expand(len(part), -1, -1), ids.expand(len(part), -1), [candidate] * len(part),
                append_eos=False, memory_mask=mask)
            for row, score in enumerate(scores[:, 0].tolist()):
                drops[lo + row] = base - score
    return {"measure": "drop in log p(answer) when the decoder may not read the segment (nats)",
            "base_logprob": base,
            "segments": [{"first_chunk": a, "end_chunk": b, "drop": d} for (a, b), d in zip(runs, drops)]}
