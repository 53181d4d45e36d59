"""Turning a batch into answers, the same way for validation, `evaluate` and `ask`:
- a row with `choices` -> the best-scoring choice;
- a `classify` row -> the best-scoring label of the closed set (all labels seen in training);
- otherwise -> greedy decoding until EOS."""

from __future__ import annotations

import torch

from mirasol.data.manifest import Sample
from mirasol.data.tokenizer import MirasolTokenizer
from mirasol.errors import UsageError
from mirasol.model import Mirasol

# Prompt + candidate sequences per decoder call when scoring options. On CPU a few hundred is
# fastest: 32 rows x 9 labels in one call, but VGGSound-size label sets (309) one row per call
# (benchmarks/candidate_scoring.py).
MAX_SCORED_SEQUENCES = 512
DEFAULT_ANSWER_TOKENS = 24  # for runs trained before train_stats.json recorded max_answer_tokens


def family_answers(stats: dict, family: str) -> list[str]:
    """The answers a question family had in training (train_stats.json), for answering by choosing
    among them instead of decoding freely. An unknown family raises UsageError naming the known ones."""
    known = stats.get("answers_by_family") or {}
    if family not in known:
        listed = ", ".join(sorted(known)) if known else "none: this run was trained before they were recorded"
        raise UsageError(f"no training answers of family {family!r}; families with answers: {listed}")
    if len(known[family]) < 2:
        raise UsageError(f"family {family!r} had one answer in training ({known[family][0]!r}): nothing to choose")
    return list(known[family])


def answer_budget(stats: dict | None) -> int:
    """How many tokens a free answer may take: the longest training answer with its EOS (from
    train_stats.json), so an answer ends where the run's training answers end."""
    return int((stats or {}).get("max_answer_tokens") or DEFAULT_ANSWER_TOKENS)


@torch.no_grad()
def predict(model: Mirasol, tokenizer: MirasolTokenizer, video: torch.Tensor, audio: torch.Tensor,
            prompt_ids: torch.Tensor, samples: list[Sample], labels: list[str] | None = None,
            max_new_tokens: int = 24, media_index: torch.Tensor | None = None,
            chunk_mask: torch.Tensor | None = None) -> list[str]:
    """media_index [B]: row i asks about clip media_index[i] of video/audio (see `collate`);
    chunk_mask [clips, T]: False for chunks that are only padding."""
    memory, memory_mask = model.encode_media(video, audio).flatten(1, 2), model.memory_mask(chunk_mask, video)
    if media_index is not None:
        memory = memory[media_index]
        memory_mask = None if memory_mask is None else memory_mask[media_index]
    return predict_from_memory(model, tokenizer, memory, prompt_ids, samples, labels, max_new_tokens, memory_mask)


@torch.no_grad()
def predict_from_memory(model: Mirasol, tokenizer: MirasolTokenizer, memory: torch.Tensor, prompt_ids: torch.Tensor,
                        samples: list[Sample], labels: list[str] | None = None, max_new_tokens: int = 24,
                        memory_mask: torch.Tensor | None = None, generate_kwargs: dict | None = None) -> list[str]:
    """`predict` from latents already computed (memory [B, M, av_dim] or latents [B, T, m, av_dim],
    e.g. a stream's), one row each. Calls the model's generate_from_latents and
    score_candidates_from_latents, the inference path every caller shares. `generate_kwargs`
    (do_sample, temperature, top_p, num_beams, ...) go to generate_from_latents for free answers."""
    memory = model.decoder_memory(memory)
    answers: list[str | None] = [None] * len(samples)
    free, by_options = [], {}
    for i, s in enumerate(samples):
        options = s.choices or (labels if s.task == "classify" and labels else None)
        if options:
            by_options.setdefault(tuple(options), []).append(i)
        else:
            free.append(i)
    for options, rows in by_options.items():  # rows with the same options: scored in one batch
        candidates = tokenizer.encode_candidates(list(options))
        per_call = max(1, MAX_SCORED_SEQUENCES // len(options))
        for start in range(0, len(rows), per_call):
            index = torch.tensor(rows[start:start + per_call], device=memory.device)
            scores = model.score_candidates_from_latents(
                memory[index], prompt_ids[index], [candidates] * len(index), append_eos=False,
                memory_mask=None if memory_mask is None else memory_mask[index])
            for i, best in zip(index.tolist(), scores.argmax(-1).tolist()):
                answers[i] = options[best]
    if free:
        index = torch.tensor(free)
        out = model.generate_from_latents(memory[index], prompt_ids[index], max_new_tokens,
                                          memory_mask=None if memory_mask is None else memory_mask[index],
                                          **(generate_kwargs or {}))
        for i, row in zip(free, out.tolist()):
            answers[i] = tokenizer.decode_answer(row)
    return answers  # type: ignore[return-value]


def answer_from_stream(model: Mirasol, tokenizer: MirasolTokenizer, stats: dict, session, samples: list[Sample],
                       device) -> list[str]:
    """`samples` (rows about one video) answered from everything a streaming session has seen."""
    from mirasol.data.dataset import _pad
    from mirasol.data.manifest import prompt_text

    prompts = _pad([tokenizer.encode_prompt(prompt_text(s), model.cfg.max_text_len) for s in samples],
                   tokenizer.pad_id, left=True).to(device)
    memory = session.latents().expand(len(samples), -1, -1, -1)
    return predict_from_memory(model, tokenizer, memory, prompts, samples, labels=stats.get("labels"),
                               max_new_tokens=answer_budget(stats))
