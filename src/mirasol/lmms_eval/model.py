"""`lmms-eval --model mirasol --model_args run=RUN[,whole=true,window=16,max_new_tokens=N,device=cuda]`.

A trained run (a run directory, a `mirasol export` folder or its Hub id) answering lmms-eval's requests:

- generate_until: a free answer about the video the task's document names (its doc_to_visual gives
  the path; the audio is the file's own track), with the request's `max_new_tokens` (at most the
  run's answer budget, or the model argument `max_new_tokens`), `until`, and sampling settings
  (`do_sample`, `temperature`, `top_p`, `top_k`, `num_beams`). A document that is a mirasol
  manifest row (the task of mirasol/lmms_eval/task.py) is answered as `mirasol evaluate` answers
  it: a row with `choices` by its best-scoring choice, a `classify` row by the best-scoring
  training label, any other by greedy decoding.
- loglikelihood: each continuation scored by the model's own candidate scoring (the sum of its
  tokens' log-probabilities, EOS included, as `mirasol evaluate` ranks choices), returned as its
  negative: lmms-eval's multiple_choice tasks take the choice with the lowest value (its built-in
  models return a loss there), so they choose what `mirasol evaluate` chooses. `is_greedy` is
  whether greedy decoding gives that answer.
- whole=true streams each video whole, chunk by chunk (as `mirasol evaluate --whole`), window=N
  lets the model attend to the last N chunks; without it the run's clip window is read (as
  `mirasol ask`). Each clip is encoded once for all the requests about it.
- a document whose visual is no video file (an image, an audio clip) gets an empty answer and a
  warning: the field's mixed benchmarks go on with their video questions.
"""

from __future__ import annotations

import collections
import os
import sys

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from tqdm import tqdm

from mirasol.data.dataset import _pad, chunk_mask
from mirasol.data.manifest import TASKS, Sample, normalize_answer, prompt_for
from mirasol.errors import UsageError
from mirasol.eval.predict import answer_budget, predict_from_memory
from mirasol.run_dir import load_run

SAMPLING_KEYS = ("do_sample", "temperature", "top_p", "top_k", "num_beams")
CACHED_CLIPS = 16  # latents kept between calls: lmms-eval asks about one document in several calls


def _scored(score: float, greedy: bool):
    """One loglikelihood response. lmms-eval 0.7's evaluator passes every response through
    unwrap_generation_output, which turns a bare (float, bool) tuple into its string; the text of a
    GenerationResult comes through as it is, so the pair travels in one."""
    try:
        from lmms_eval.api.instance import GenerationResult
    except ImportError:  # versions before it pass the tuple on unchanged
        return (score, greedy)
    return GenerationResult(text=(score, greedy))


class NotAVideo(UsageError):
    """A document whose visual is not a video file (an image, an audio array)."""


def _flag(value) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")


class MirasolLMMS(lmms):
    is_simple = True

    def __init__(self, run: str, whole=False, window=None, max_new_tokens=None, device: str | None = None,
                 batch_size=1, max_batch_size=None, **unknown) -> None:
        """`batch_size` (lmms-eval's --batch_size) is accepted and not needed: the rows about one clip
        are answered in one decoder batch whatever it says."""
        super().__init__()
        if unknown:
            raise UsageError(f"unknown model_args {', '.join(sorted(unknown))} for --model mirasol "
                             "(valid: run, whole, window, max_new_tokens, device)")
        self.whole = _flag(whole)
        self.window = None if window in (None, "", "none") else int(window)
        if self.window is not None and not self.whole:
            raise UsageError("model_args window applies to streaming: add whole=true")
        if self.window is not None and self.window < 1:
            raise UsageError(f"model_args window takes a number of chunks >= 1, got {self.window}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.tokenizer, self.stats, _ = load_run(run, self.device)
        self.budget = int(max_new_tokens) if max_new_tokens not in (None, "") else answer_budget(self.stats)
        self._latents: collections.OrderedDict = collections.OrderedDict()

    # --- documents and media ------------------------------------------------------------------
    def _doc(self, task: str, split: str, doc_id) -> dict:
        return self.task_dict[task][split][doc_id]

    @staticmethod
    def _video(doc_to_visual, doc: dict, task: str) -> str:
        visuals = doc_to_visual(doc) if doc_to_visual is not None else None
        first = visuals[0] if isinstance(visuals, (list, tuple)) and visuals else visuals
        if isinstance(first, dict):
            first = first.get("path") or first.get("video")
        if not isinstance(first, (str, os.PathLike)):
            raise NotAVideo(f"lmms-eval task {task}: mirasol answers about a video file, and the task's "
                            f"doc_to_visual gave {type(first).__name__} instead of a path")
        return os.fspath(first)

    def _sample(self, doc: dict, ctx: str, video: str) -> Sample:
        """The row to answer: a mirasol manifest row as it is, any other document as a question."""
        if isinstance(doc, dict) and doc.get("task") in TASKS and "answer" in doc:
            return Sample(id=str(doc.get("id")), video=video, task=doc["task"], answer=str(doc["answer"]),
                          question=doc.get("question"), start=doc.get("start"), end=doc.get("end"),
                          choices=list(doc["choices"]) if doc.get("choices") else None, type=doc.get("type"))
        return Sample(id=str(doc.get("id", "")) if isinstance(doc, dict) else "", video=video, task="qa",
                      answer="", question=ctx.strip() or None)

    def _prompt(self, ctx: str) -> list[int]:
        return self.tokenizer.encode_prompt(ctx.strip() or prompt_for("caption"), self.model.cfg.max_text_len)

    @torch.no_grad()
    def _memory(self, sample: Sample) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(latents [1, T, m, D], memory mask [1, M] or None) of the sample's clip, encoded once."""
        key = (sample.video, sample.start, sample.end)
        if key in self._latents:
            self._latents.move_to_end(key)
            return self._latents[key]
        model, cfg = self.model, self.model.cfg
        if self.whole:
            from mirasol.media.chunk_reader import iter_chunks

            session = model.stream(max_context_chunks=self.window)
            for chunk in iter_chunks(sample.video, cfg, start=sample.start or 0.0, end=sample.end):
                session.push(chunk.video[None].to(self.device), chunk.audio[None].to(self.device))
            found = (session.latents(), None)
        else:
            from mirasol.media.clip import load_clip

            clip = load_clip(sample.video, cfg, start=sample.start, end=sample.end)
            video = clip.video[None].to(self.device)
            latents = model.encode_media(video, clip.audio[None].to(self.device))
            found = (latents, model.memory_mask(chunk_mask(clip.valid_chunks, cfg.num_chunks)[None].to(self.device),
                                                video))
        self._latents[key] = found
        while len(self._latents) > CACHED_CLIPS:
            self._latents.popitem(last=False)
        return found

    def _answer(self, samples: list[Sample], prompts: list[list[int]], settings: dict) -> list[str]:
        """Answers to rows about one clip (one decoder batch), as `mirasol evaluate` gives them."""
        latents, mask = self._memory(samples[0])
        n = len(samples)
        memory = self.model.decoder_memory(latents).expand(n, -1, -1)
        prompt_ids = _pad(prompts, self.tokenizer.pad_id, left=True).to(self.device)
        return predict_from_memory(self.model, self.tokenizer, memory, prompt_ids, samples,
                                   labels=self.stats.get("labels"), max_new_tokens=settings["max_new_tokens"],
                                   memory_mask=None if mask is None else mask.expand(n, -1),
                                   generate_kwargs=settings["sampling"])

    def _settings(self, gen_kwargs: dict | None) -> dict:
        gen = dict(gen_kwargs or {})
        limit = gen.get("max_new_tokens")
        sampling = {}
        if _flag(gen.get("do_sample", False)) and float(gen.get("temperature") or 0) > 0:
            sampling = {"do_sample": True, "temperature": float(gen["temperature"]),
                        "top_p": float(gen.get("top_p") or 1.0), "top_k": int(gen.get("top_k") or 0)}
        if int(gen.get("num_beams") or 1) > 1:
            sampling["num_beams"] = int(gen["num_beams"])
        until = gen.get("until") or []
        return {"max_new_tokens": min(self.budget, int(limit)) if limit else self.budget, "sampling": sampling,
                "until": [until] if isinstance(until, str) else [u for u in until if u]}

    # --- lmms-eval's requests -----------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[str]:
        rows, refused = [], collections.Counter()
        for request in requests:
            ctx, gen_kwargs, doc_to_visual, doc_id, task, split = request.args[:6]
            doc = self._doc(task, split, doc_id)
            try:
                video = self._video(doc_to_visual, doc, task)
            except NotAVideo as err:  # benchmarks that mix images and audio with videos: answer the videos
                refused[str(err)] += 1
                rows.append(None)
                continue
            rows.append((self._sample(doc, ctx, video), self._prompt(ctx), self._settings(gen_kwargs)))
        for message, count in refused.items():
            print(f"warning: {message}; {count} request(s) answered with an empty string", file=sys.stderr)
        groups: dict[tuple, list[int]] = collections.defaultdict(list)
        for i, (sample, _, settings) in ((i, r) for i, r in enumerate(rows) if r is not None):
            key = (sample.video, sample.start, sample.end, settings["max_new_tokens"],
                   tuple(sorted(settings["sampling"].items())))
            groups[key].append(i)
        answers: list[str] = [""] * len(rows)
        bar = tqdm(total=sum(map(len, groups.values())), desc="mirasol answering", disable=self.rank != 0,
                   file=sys.stderr)
        for index in groups.values():
            settings = rows[index[0]][2]
            texts = self._answer([rows[i][0] for i in index], [rows[i][1] for i in index], settings)
            for i, text in zip(index, texts):
                for stop in rows[i][2]["until"]:
                    text = text.split(stop)[0]
                answers[i] = text
            bar.update(len(index))
        bar.close()
        return answers

    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list:
        """(negative log-likelihood, is_greedy) per request, each wrapped as `_scored` says."""
        groups: dict[tuple, list[int]] = collections.defaultdict(list)
        found = []
        for i, request in enumerate(requests):
            ctx, continuation, doc_to_visual, doc_id, task, split = request.args[:6]
            if not continuation.strip():
                raise UsageError(f"lmms-eval task {task}: an empty continuation cannot be scored")
            doc = self._doc(task, split, doc_id)
            found.append((self._sample(doc, ctx, self._video(doc_to_visual, doc, task)), ctx, continuation.strip()))
            groups[(task, split, doc_id, ctx)].append(i)
        results: list = [None] * len(requests)
        bar = tqdm(total=len(requests), desc="mirasol scoring", disable=self.rank != 0, file=sys.stderr)
        for index in groups.values():  # the choices of one question: scored in one call, as evaluate does
            sample, ctx, _ = found[index[0]]
            latents, mask = self._memory(sample)
            prompt = torch.tensor([self._prompt(ctx)], device=self.device)
            options = [found[i][2] for i in index]
            scores = self.model.score_candidates_from_latents(
                latents, prompt, [self.tokenizer.encode_candidates(options)], append_eos=False, memory_mask=mask)[0]
            greedy = self.tokenizer.decode_answer(self.model.generate_from_latents(
                latents, prompt, self.budget, memory_mask=mask)[0].tolist())
            for i, option, score in zip(index, options, scores.tolist()):
                results[i] = _scored(-float(score), normalize_answer(option) == normalize_answer(greedy))
            bar.update(len(index))
        bar.close()
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("mirasol answers one question at a time: multi-round tasks are not supported")
