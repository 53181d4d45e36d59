"""`mirasol ask --run RUN VIDEO ["question"]`: decode one file exactly as training did, answer."""

from __future__ import annotations

import sys

import torch

from mirasol.datasets.manifest import Sample, prompt_for


def ask(run: str, video: str, question: str | None = None, start: float | None = None,
        end: float | None = None, log=None) -> str:
    """The answer (or, without a question, a caption). `log` (a file) gets a line saying which
    seconds the model saw when the video is longer than the model's clip."""
    from mirasol.media.clip import load_clip
    from mirasol.data.dataset import chunk_mask
    from mirasol.run_dir import load_run
    from mirasol.eval.predict import predict

    model, tokenizer, stats, _ = load_run(run)
    clip = load_clip(video, model.cfg, start=start, end=end)
    if log is not None and clip.duration is not None and clip.duration > model.cfg.clip_seconds + 0.5:
        seen = f"{clip.start:.1f}-{clip.start + clip.valid_seconds:.1f} s"
        print(f"note: the model sees {model.cfg.clip_seconds:g} s of a video; answering about {seen} of "
              f"{video} ({clip.duration:.1f} s long). Choose another part with --start/--end.", file=log)
    task = "qa" if question else "caption"
    prompt = prompt_for(task, question)
    sample = Sample(id="ask", video=video, task=task, answer="", question=question)
    prompt_ids = torch.tensor([tokenizer.encode_prompt(prompt, model.cfg.max_text_len)])
    [answer] = predict(model, tokenizer, clip.video[None], clip.audio[None], prompt_ids, [sample],
                       labels=stats.get("labels"),
                       chunk_mask=chunk_mask(clip.valid_chunks, model.cfg.num_chunks)[None])
    return answer


def cli_ask(args) -> int:
    from mirasol.media.decode import MediaError

    try:
        print(ask(args.run, args.video, args.question, args.start, args.end, log=sys.stderr))
    except (MediaError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
