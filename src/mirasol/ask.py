"""`mirasol ask --run RUN VIDEO ["question"]`: decode one file exactly as training did, answer.

With `--whole` or `--at 30,60,90` the video is streamed instead: its chunks are decoded one at a
time (mirasol.media.chunk_reader) and pushed into a streaming session of the model (Mirasol.stream), so
a video of any length is answered about at constant cost per chunk; `--at` answers after each of
the given seconds."""

from __future__ import annotations

import math

import torch

from mirasol.data.manifest import Sample, prompt_for
from mirasol.errors import UsageError


def _prompt(model, tokenizer, video: str, question: str | None, stats: dict, family: str | None = None):
    """The row to answer; with `family`, answered by choosing among that family's training answers."""
    from mirasol.eval.predict import family_answers

    task = "qa" if question else "caption"
    choices = family_answers(stats, family) if family else None
    sample = Sample(id="ask", video=video, task=task, answer="", question=question, choices=choices)
    prompt_ids = torch.tensor([tokenizer.encode_prompt(prompt_for(task, question), model.cfg.max_text_len)])
    return sample, prompt_ids


def ask(run: str, video: str, question: str | None = None, start: float | None = None,
        end: float | None = None, log=None, family: str | None = None) -> str:
    """The answer (or, without a question, a caption). A free answer stops where the run's training
    answers stop; with `family` the answer is the best-scoring of that family's training answers.
    `log` (a file) gets a line saying which seconds the model saw when the video is longer than
    the model's clip."""
    from mirasol.media.clip import load_clip
    from mirasol.data.dataset import chunk_mask
    from mirasol.run_dir import load_run
    from mirasol.eval.predict import answer_budget, predict

    model, tokenizer, stats, _ = load_run(run)
    sample, prompt_ids = _prompt(model, tokenizer, video, question, stats, family)  # a bad family fails first
    clip = load_clip(video, model.cfg, start=start, end=end)
    cfg = model.cfg
    if log is not None and clip.end - clip.start > cfg.clip_seconds + 0.5 / cfg.fps:  # clip_window: uniform
        print(f"note: the model's {cfg.num_chunks} chunks are spread over {clip.start:.1f}-{clip.end:.1f} s of "
              f"{video} (one per {(clip.end - clip.start) / cfg.num_chunks:.1f} s).", file=log)
    elif log is not None and clip.duration is not None and clip.duration > cfg.clip_seconds + 0.5:
        seen = f"{clip.start:.1f}-{clip.start + clip.valid_seconds:.1f} s"
        print(f"note: the model sees {model.cfg.clip_seconds:g} s of a video; answering about {seen} of "
              f"{video} ({clip.duration:.1f} s long). Choose another part with --start/--end, or "
              f"stream all of it with --whole.", file=log)
    [answer] = predict(model, tokenizer, clip.video[None], clip.audio[None], prompt_ids, [sample],
                       labels=stats.get("labels"), max_new_tokens=answer_budget(stats),
                       chunk_mask=chunk_mask(clip.valid_chunks, model.cfg.num_chunks)[None])
    return answer


def parse_times(text: str) -> list[float]:
    """'30,60,90' -> [30.0, 60.0, 90.0] (seconds, increasing)."""
    try:
        times = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"--at takes seconds separated by commas, e.g. --at 30,60,90; got {text!r}") from None
    if not times or any(t <= 0 for t in times) or times != sorted(times):
        raise UsageError(f"--at takes increasing positive seconds, e.g. --at 30,60,90; got {text!r}")
    return times


def ask_stream(run: str, video: str, question: str | None = None, at: list[float] | None = None,
               start: float | None = None, end: float | None = None, max_context_chunks: int | None = None,
               whole: bool = False, log=None, family: str | None = None) -> list[tuple[float, str]]:
    """Stream `video` (from `start` to `end`, default all of it) chunk by chunk through the run's
    model and answer after each second in `at` (seconds from `start`) or, without `at`, once at the
    end (with `whole` as well, also at the end). Returns [(seconds seen, answer)], printing each;
    `log` (a file) gets a progress line of chunks consumed. An `at` time past the end of the video
    is answered at the end. `family`: as in `ask`."""
    from mirasol.eval.predict import answer_budget, predict_from_memory
    from mirasol.media.chunk_reader import iter_chunks
    from mirasol.run_dir import load_run

    model, tokenizer, stats, _ = load_run(run)
    cfg = model.cfg
    sample, prompt_ids = _prompt(model, tokenizer, video, question, stats, family)
    session = model.stream(max_context_chunks=max_context_chunks)
    if log is not None and cfg.clip_window == "uniform":
        print(f"note: this run saw {cfg.num_chunks} chunks spread over each whole video in training "
              f"(clip_window: uniform); streaming feeds consecutive {cfg.chunk_seconds:g} s chunks.", file=log)
    pending = list(at or [])
    # without --whole, stop reading once the last requested second is seen
    stop = None if whole or not pending else (start or 0.0) + pending[-1]
    end = stop if end is None else (end if stop is None else min(end, stop))
    answers, seen = [], 0.0

    def answer(when: float) -> None:
        memory = session.latents().flatten(1, 2)
        [text] = predict_from_memory(model, tokenizer, memory, prompt_ids, [sample], labels=stats.get("labels"),
                                     max_new_tokens=answer_budget(stats))
        answers.append((when, text))
        if log is not None:
            print(f"\r{' ' * 60}\r", end="", file=log)  # clear the progress line
        print(f"[{when:g} s] {text}" if at else text, flush=True)

    total = None
    for chunk in iter_chunks(video, cfg, start=start or 0.0, end=end):
        session.push(chunk.video[None], chunk.audio[None])
        seen = chunk.index * cfg.chunk_seconds + chunk.valid_seconds
        if total is None and chunk.duration is not None:
            span = (end if end is not None else chunk.duration) - (start or 0.0)
            total = max(1, math.ceil(span / cfg.chunk_seconds - 1e-9))
        if log is not None:
            of = f"/{total}" if total else ""
            print(f"\rchunks {session.chunks}{of} ({seen:.1f} s of video)", end="", file=log, flush=True)
        while pending and seen >= pending[0] - 1e-6:
            answer(pending.pop(0))
    if log is not None:
        print(file=log)
    if whole or not at or pending:
        if pending and log is not None:
            print(f"note: the video ends at {seen:.1f} s; answering about all of it for "
                  f"{', '.join(f'{t:g}' for t in pending)} s", file=log)
        answer(round(seen, 1))
    return answers
