"""Streaming: consume a video of any length chunk by chunk, at constant cost per chunk, and ask
about it at any moment.

    session = model.stream(max_context_chunks=None)
    for video_chunk, audio_chunk in chunks:          # [B, f, 3, S, S], [B, n_mels, a]
        session.push(video_chunk, audio_chunk)
        answer = session.generate(prompt_ids)        # about everything pushed so far

Each pushed chunk goes through the per-chunk encoders and the combiner (the TTM memory is carried
from chunk to chunk), then through the AV model, whose blocks keep the keys/values of earlier
chunks in a cache: the new chunk attends to them exactly as under the block-causal mask, so the
latents equal `encode_media` on the same chunks. With `max_context_chunks` W the caches keep only
the last W - 1 chunks (memory bounded on unbounded streams) and the latents equal
`encode_media(..., max_context_chunks=W)`. As in any windowed transformer, a chunk's latents then
depend on the last W chunks at each layer, so on up to av_layers * (W - 1) + 1 chunks in all
(exactly the last W with one AV layer), plus whatever the TTM memory carried.

The latents of every pushed chunk (m x av_dim floats each) are kept for the text decoder to attend
to, or only the last `keep_latents` chunks' (memory flat on an unbounded stream, answers about
those chunks only); `latents()` returns them. Use the model in eval mode.
"""

from __future__ import annotations

import torch

from mirasol.model.av_model import check_window
from mirasol.model.chunks import split_chunks


class MediaStream:
    def __init__(self, model, max_context_chunks: int | None = None, keep_latents: int | None = None):
        self.model, self.cfg = model, model.cfg
        self.window = check_window(max_context_chunks)
        self.caches = [{} for _ in model.av_model.blocks]
        self.state = None  # the combiner's (TTM memory), created at the first push
        self.batch: int | None = None
        self.chunks = 0  # chunks pushed so far
        self.previous = None  # the last chunk's combiner output (the AV model's chunk_delta input)
        self._latents: list[torch.Tensor] = []
        self.keep_latents = check_window(keep_latents)

    @torch.no_grad()
    def push(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Append one chunk (video [B, f, 3, S, S], audio [B, n_mels, a]) or several whole chunks
        (f and a multiplied by the same count). Returns the new chunks' latents [B, n, m, D]."""
        video_chunks, audio_chunks = split_chunks(video, audio, self.cfg)
        if self.batch is None:
            self.batch = video.shape[0]
            self.state = self.model.combiner.init_state(self.batch)
        elif video.shape[0] != self.batch:
            raise ValueError(f"this stream has batch size {self.batch}; got a chunk of batch {video.shape[0]}")
        tokens = self.model.chunk_tokens(video_chunks, audio_chunks)  # per-chunk encoders, all at once
        new = []
        for i in range(tokens.shape[1]):
            z, self.state = self.model.combiner.step(tokens[:, i], self.state)
            h = self.model.av_model.step(z, self.chunks, self.caches, self.window, self.previous)
            self.previous = z
            self._latents.append(h)
            if self.keep_latents is not None and len(self._latents) > self.keep_latents:
                del self._latents[0]
            new.append(h)
            self.chunks += 1
        return torch.stack(new, dim=1)

    def latents(self) -> torch.Tensor:
        """Latents of every chunk pushed so far (the last keep_latents): [B, chunks, m, D]."""
        if not self._latents:
            raise RuntimeError("nothing pushed yet: push at least one chunk first")
        return torch.stack(self._latents, dim=1)

    def cache_tokens(self) -> int:
        """Keys held per layer by the AV model's cache (bounded by (W - 1) * m with a window)."""
        return self.caches[0]["k"].shape[2] if self.caches and "k" in self.caches[0] else 0

    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int = 16, **kwargs) -> torch.Tensor:
        """Answer tokens [B, n] about everything pushed so far (kwargs as in Mirasol.generate)."""
        return self.model.generate_from_latents(self.latents(), prompt_ids, max_new_tokens, **kwargs)

    def score_candidates(self, prompt_ids: torch.Tensor, candidate_ids, **kwargs) -> torch.Tensor:
        """Log-likelihood [B, C] of each candidate answer given everything pushed so far."""
        return self.model.score_candidates_from_latents(self.latents(), prompt_ids, candidate_ids, **kwargs)
