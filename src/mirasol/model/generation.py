"""Text generation and candidate scoring over precomputed audio-video latents.

All functions take `memory` [B, M, av_dim] (the flattened latents of `Mirasol.encode_media`) and
prompts [B, P] padded with pad_id anywhere (left or right); prompts are repacked to left padding
so that every row's next token sits in the last column. Self-attention keys/values are cached;
cross-attention keys/values are computed once per clip.
"""

from __future__ import annotations

import torch

from mirasol.model.text_decoder import TextDecoder


def left_pad(ids: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Move every row's non-pad tokens to the right end. Returns (ids, attention_mask)."""
    real = ids != pad_id
    lengths = real.sum(-1)
    width = max(int(lengths.max()), 1)
    out = torch.full((ids.shape[0], width), pad_id, dtype=ids.dtype, device=ids.device)
    mask = torch.zeros(ids.shape[0], width, dtype=torch.bool, device=ids.device)
    for row in range(ids.shape[0]):
        n = int(lengths[row])
        if n:
            out[row, width - n:] = ids[row][real[row]]
            mask[row, width - n:] = True
    return out, mask


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token once the mass before it already reaches top_p (the top token always stays)
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


class _Stepper:
    """Runs the decoder one token at a time, with or without a KV cache (the uncached path
    recomputes the whole sequence; it exists to check the cache)."""

    def __init__(self, decoder: TextDecoder, memory: torch.Tensor, use_cache: bool,
                 memory_mask: torch.Tensor | None = None, memory_rows: torch.Tensor | None = None):
        self.decoder, self.use_cache, self.memory_mask = decoder, use_cache, memory_mask
        self.context_kv = decoder.context_kv(memory)
        if memory_rows is not None:  # rows about the same clip share its projected keys/values
            self.context_kv = [(k[memory_rows], v[memory_rows]) for k, v in self.context_kv]
        self.caches = decoder.new_caches() if use_cache else None

    def start(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.ids, self.mask = ids, mask
        hidden = self.decoder(ids, attention_mask=mask, caches=self.caches, context_kv=self.context_kv,
                              memory_mask=self.memory_mask)
        return self.decoder.logits(hidden[:, -1]).float()

    def step(self, token: torch.Tensor) -> torch.Tensor:
        self.ids = torch.cat([self.ids, token[:, None]], dim=1)
        self.mask = torch.cat([self.mask, torch.ones_like(token[:, None], dtype=torch.bool)], dim=1)
        new = token[:, None] if self.use_cache else self.ids
        hidden = self.decoder(new, attention_mask=self.mask, caches=self.caches, context_kv=self.context_kv,
                              memory_mask=self.memory_mask)
        return self.decoder.logits(hidden[:, -1]).float()

    def reorder(self, index: torch.Tensor) -> None:
        self.ids, self.mask = self.ids[index], self.mask[index]
        self.context_kv = [(k[index], v[index]) for k, v in self.context_kv]
        if self.memory_mask is not None:
            self.memory_mask = self.memory_mask[index]
        if self.caches is not None:
            self.decoder.reorder_caches(self.caches, index)


@torch.no_grad()
def generate(
    decoder: TextDecoder,
    memory: torch.Tensor,
    prompt_ids: torch.Tensor,
    max_new_tokens: int = 16,
    *,
    pad_id: int,
    eos_id: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    memory_mask: torch.Tensor | None = None,
    memory_rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Returns new tokens [B, n]: each row's answer, its EOS, then pad_id. memory_mask [B, M]:
    False for memory tokens to ignore (chunks that are only padding). memory_rows [B]: row b reads
    memory[memory_rows[b]] (memory then holds each clip once, [C, M, av_dim]), so that questions
    about the same clip share one projection of its cross-attention keys/values."""
    ids, mask = left_pad(prompt_ids, pad_id)
    if num_beams > 1:
        return _beam_search(decoder, memory, ids, mask, max_new_tokens, pad_id, eos_id, num_beams,
                            length_penalty, use_cache, memory_mask, memory_rows)
    stepper = _Stepper(decoder, memory, use_cache, memory_mask, memory_rows)
    logits = stepper.start(ids, mask)
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    out = []
    for step in range(max_new_tokens):
        if do_sample:
            probs = filter_logits(logits / max(temperature, 1e-5), top_k, top_p).softmax(-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        else:
            token = logits.argmax(-1)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        out.append(token)
        finished |= token == eos_id
        if finished.all() or step == max_new_tokens - 1:
            break
        logits = stepper.step(token)
    return torch.stack(out, dim=1) if out else ids.new_zeros(ids.shape[0], 0)


def _beam_search(decoder, memory, ids, mask, max_new_tokens, pad_id, eos_id, beams, length_penalty, use_cache,
                 memory_mask=None, memory_rows=None):
    batch = ids.shape[0]
    stepper = _Stepper(decoder, memory, use_cache, memory_mask, memory_rows)
    logits = stepper.start(ids, mask)
    expand = torch.arange(batch, device=ids.device).repeat_interleave(beams)
    stepper.reorder(expand)
    logits = logits[expand]
    scores = torch.full((batch, beams), float("-inf"), device=ids.device)
    scores[:, 0] = 0.0  # all beams start identical: keep one so the first step picks distinct tokens
    scores = scores.view(-1)
    finished = torch.zeros(batch * beams, dtype=torch.bool, device=ids.device)
    lengths = torch.zeros(batch * beams, device=ids.device)
    seqs = ids.new_zeros(batch * beams, 0)
    vocab = logits.shape[-1]
    for step in range(max_new_tokens):
        logp = logits.log_softmax(-1)
        # a finished beam may only continue with pad, at no cost, so its score stays put
        logp[finished] = float("-inf")
        logp[finished, pad_id] = 0.0
        top_scores, top_index = (scores[:, None] + logp).view(batch, beams * vocab).topk(beams, dim=-1)
        source = (torch.arange(batch, device=ids.device)[:, None] * beams + top_index // vocab).view(-1)
        token = (top_index % vocab).view(-1)
        finished, lengths, seqs = finished[source], lengths[source], seqs[source]
        lengths = lengths + (~finished).float()
        seqs = torch.cat([seqs, token[:, None]], dim=1)
        finished = finished | (token == eos_id)
        scores = top_scores.view(-1)
        if finished.all() or step == max_new_tokens - 1:
            break
        stepper.reorder(source)
        logits = stepper.step(token)
    normalised = (scores / lengths.clamp(min=1) ** length_penalty).view(batch, beams)
    best = torch.arange(batch, device=ids.device) * beams + normalised.argmax(-1)
    return seqs[best]


@torch.no_grad()
def score_candidates(
    decoder: TextDecoder,
    memory: torch.Tensor,
    prompt_ids: torch.Tensor,
    candidate_ids,
    *,
    pad_id: int,
    eos_id: int,
    append_eos: bool = True,
    normalize: bool = False,
    memory_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Log-likelihood of each candidate answer given the clip and prompt: [B, C].

    candidate_ids: LongTensor [B, C, L] padded with pad_id, or nested lists (B x C x tokens).
    With append_eos the candidate must also end there ("red" does not get credit for "red car").
    normalize divides by the number of scored tokens. memory_mask [B, M] as in `generate`.
    """
    if torch.is_tensor(candidate_ids):
        candidate_ids = [[[t for t in c.tolist() if t != pad_id] for c in row] for row in candidate_ids]
    batch = len(candidate_ids)
    num = len(candidate_ids[0])
    if any(len(row) != num for row in candidate_ids):
        raise ValueError("every row must have the same number of candidates")
    seqs, starts, rows = [], [], []
    for b in range(batch):
        prompt = [t for t in prompt_ids[b].tolist() if t != pad_id]
        for cand in candidate_ids[b]:
            answer = list(cand) + ([eos_id] if append_eos else [])
            if not answer:
                raise ValueError(f"empty candidate in row {b}")
            seqs.append(prompt + answer)
            starts.append(len(prompt))
            rows.append(b)
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long, device=memory.device)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, device=memory.device)
    mask = ids != pad_id
    rows_t = torch.tensor(rows, device=memory.device)
    # Cross-attention keys/values are projected once per clip, then shared by its candidates.
    context_kv = [(k[rows_t], v[rows_t]) for k, v in decoder.context_kv(memory)]
    hidden = decoder(ids, context_kv=context_kv, attention_mask=mask,
                     memory_mask=None if memory_mask is None else memory_mask[rows_t])
    logp = decoder.logits(hidden[:, :-1]).float().log_softmax(-1)
    token_logp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)  # log p(ids[i+1] | ids[:i+1])
    positions = torch.arange(width - 1, device=memory.device)[None]
    starts_t = torch.tensor(starts, device=memory.device)[:, None]
    lengths_t = torch.tensor([len(s) for s in seqs], device=memory.device)[:, None]
    scored = (positions + 1 >= starts_t) & (positions + 1 < lengths_t)
    total = (token_logp * scored).sum(-1)
    if normalize:
        total = total / scored.sum(-1)
    return total.view(batch, num)
