"""The work behind `mirasol serve`, without the web framework: check an upload, encode its chunks
once into the latent cache, answer questions from the cache. The FastAPI app (app.py) is a thin
layer of routes over this class, so the rules here are the same for the page, the API and tests.

Safety rules kept here:
- uploads are written under names the server makes (a random temporary name, then removed); the
  cache's file names are hex digests; example videos are looked up by name in a fixed table built
  at start-up. Nothing a client sends becomes a path.
- a file is only decoded: its first bytes must be those of a known container (MP4/MOV, Matroska/
  WebM, AVI, Ogg, FLV, MPEG-TS/PS), so playlists and concat lists (text files that make FFmpeg open
  other files or URLs) never reach the demuxer; the container FFmpeg then finds must be one of
  those too; its frame size and duration are checked before anything is decoded beyond the first
  chunk. All of this, and the decoding itself, runs in a limited worker process (sandbox.py), never
  in the server's.
- one worker thread encodes, one video at a time, from a bounded queue; questions are admitted up
  to a bound; beyond either bound the caller gets Busy (HTTP 503 with Retry-After), never an
  unbounded backlog. The model runs under one lock, so memory does not grow with the number of
  clients; questions waiting for it are answered together in one batched pass (batcher.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import queue
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mirasol.choices import VIDEO_EXTENSIONS
from mirasol.errors import MirasolError, UsageError
from mirasol.eval.predict import answer_budget, family_answers
from mirasol.serve.batcher import MAX_BATCH, WINDOW_S, Answer, Batcher, Request
from mirasol.serve.evidence import chunk_evidence
from mirasol.serve.latent_cache import KEY, MEMORY_BYTES, LatentCache, entry_key, file_sha256
from mirasol.serve.sandbox import Refused, Sandbox, SandboxError, SandboxLimits

MAX_EXAMPLES = 100  # the first, by name, of an --examples folder


class UploadError(MirasolError, ValueError):
    """An upload that cannot be used; `status` is the HTTP status to answer with (413 or 422)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


class Busy(MirasolError):
    """The server is at its bound: try again after `retry_after` seconds (HTTP 503)."""

    def __init__(self, message: str, retry_after: int = 2):
        super().__init__(message)
        self.retry_after = retry_after


class NotFound(MirasolError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class NotReady(MirasolError):
    """The video is still being encoded (HTTP 409)."""


@dataclass
class Limits:
    max_upload_bytes: int = 200 * 2**20
    max_seconds: float = 600.0  # of video
    max_side: int = 4096  # pixels, width and height each
    queue: int = 8  # videos waiting to be encoded (besides the one being encoded)
    max_pending: int = 64  # questions admitted at once (running or waiting for the model)
    max_question_chars: int = 500
    max_choices: int = 32
    max_choice_chars: int = 200
    decoder_memory_mb: int = 2048  # the decoder worker's memory beyond its size at start (sandbox.py)
    decoder_cpu_s: int = 600  # its CPU time for one probe or one video's decoding
    decoder_wall_s: float = 60.0  # the longest wait for its next answer (the probe, or the next chunk)
    probes: int = 2  # uploads checked at once

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Job:
    id: str
    name: str
    state: str = "queued"  # queued | encoding | ready | failed
    chunks_done: int = 0
    chunks_total: int | None = None
    error: str | None = None
    status: int | None = None  # the HTTP status of a failure
    source: Path | None = None  # the file to encode
    upload: Path | None = None  # ... when it is an upload the job deletes afterwards
    started: float = field(default_factory=time.monotonic)


def run_id(run: Path) -> str:
    """Names the run's weights and settings: its config.json, and the weights file's size and time."""
    digest = hashlib.sha256((run / "config.json").read_bytes())
    st = (run / "model.safetensors").stat()
    digest.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


class Service:
    """Loads the run once; encodes uploads into the latent cache; answers questions from it."""

    def __init__(self, run: str | os.PathLike, cache_dir: str | os.PathLike, cache_bytes: int = 2 * 2**30,
                 limits: Limits | None = None, window: int | None = None,
                 examples: str | os.PathLike | None = None, chunk_delay: float = 0.0,
                 batch_window_s: float = WINDOW_S, max_batch: int = MAX_BATCH, sandbox: bool = True,
                 memory_cache_bytes: int = MEMORY_BYTES):
        from mirasol.run_dir import load_run

        self.run = Path(run)
        self.model, self.tokenizer, self.stats, self.run_cfg = load_run(self.run)
        self.model.eval()
        self.cfg = self.model.cfg
        self.limits = limits or Limits()
        self.window = window
        self.chunk_delay = chunk_delay  # tests: slow the encoding down to interrupt it
        self.run_id = run_id(self.run)
        self.sampling = json.dumps({"stream": True, "window": window, "fps": self.cfg.fps,
                                    "image_size": self.cfg.image_size, "frames": self.cfg.frames_per_chunk,
                                    "chunk_seconds": self.cfg.chunk_seconds}, sort_keys=True)
        root = Path(cache_dir)
        self.cache = LatentCache(root / "latents", cache_bytes, memory_cache_bytes)
        self.uploads = root / "uploads"
        shutil.rmtree(self.uploads, ignore_errors=True)  # uploads of a previous process
        self.uploads.mkdir(parents=True, exist_ok=True)
        self.page_files = root / "page"  # the Gradio page's own files (gradio_page.py)
        shutil.rmtree(self.page_files, ignore_errors=True)
        self.page_files.mkdir(parents=True, exist_ok=True)
        lim = self.limits
        self.sandbox = Sandbox(self.uploads, SandboxLimits(memory_mb=lim.decoder_memory_mb, cpu_s=lim.decoder_cpu_s,
                                                           wall_s=lim.decoder_wall_s, probes=lim.probes),
                               enabled=sandbox)
        self.examples = {}
        if examples is not None:
            for p in sorted(Path(examples).iterdir()):
                if p.is_file() and p.suffix.lower().lstrip(".") in VIDEO_EXTENSIONS and len(self.examples) < MAX_EXAMPLES:
                    self.examples[p.name] = p
        self.model_lock = threading.Lock()
        self.jobs: dict[str, Job] = {}
        self.jobs_lock = threading.Lock()
        self.queue: queue.Queue[Job] = queue.Queue(maxsize=self.limits.queue)
        self.pending = threading.BoundedSemaphore(self.limits.max_pending)
        self.silence = self._silence()
        self.batcher = Batcher(self.model, self.tokenizer, self.model_lock, batch_window_s, max_batch)
        self.worker = threading.Thread(target=self._work, name="mirasol-encoder", daemon=True)
        self.worker.start()
        self.streams = None  # live streams: streams.Streams attaches itself here (app.py makes one)

    # --- facts ------------------------------------------------------------------------------
    def info(self) -> dict:
        model = self.run_cfg.to_dict()["model"]
        stats = self.stats
        return {
            "run": self.run.name,
            "preset": model.get("preset"),
            "combiner": self.cfg.combiner,
            "parameters": self.model.num_parameters(),
            "num_chunks_trained": self.cfg.num_chunks,
            "chunk_seconds": self.cfg.chunk_seconds,
            "frames_per_chunk": self.cfg.frames_per_chunk,
            "fps": self.cfg.fps,
            "image_size": self.cfg.image_size,
            "clip_window": self.cfg.clip_window,
            "window": self.window,
            "trained_on": {"samples": stats.get("num_samples"),
                           "families": sorted(stats.get("answer_prior", {})),
                           "labels": stats.get("labels", []),
                           "families_with_answers": sorted(f for f, a in stats.get("answers_by_family", {}).items()
                                                           if len(a) > 1),
                           "max_answer_tokens": answer_budget(stats)},
            "limits": self.limits.to_dict(),
            "examples": sorted(self.examples),
            "decoder": self.sandbox.isolation,
            "streams": self.streams.info() if self.streams is not None else {"allowed": []},
        }

    def health(self) -> dict:
        return {"status": "ok", "encoding_queue": self.queue.qsize(), "cached_videos": len(self.cache.keys()),
                "worker_alive": self.worker.is_alive(), "videos_encoded": self.cache.writes,
                "cache_hits": self.cache.hits, "batching": self.batcher.stats(),
                "streams_followed": self.streams.running() if self.streams is not None else 0}

    # --- uploads ----------------------------------------------------------------------------
    def new_upload_path(self) -> Path:
        return self.uploads / f"{secrets.token_hex(16)}.upload"

    def submit_file(self, path: Path, name: str, owned: bool) -> dict:
        """Check `path` and queue its encoding (unless cached). `owned`: the service deletes the file
        when done (an upload); examples are never deleted. Raises UploadError / Busy."""
        try:
            size = path.stat().st_size
            if size > self.limits.max_upload_bytes:
                raise UploadError(f"the file is {size / 2**20:.1f} MiB; this server takes at most "
                                  f"{self.limits.max_upload_bytes / 2**20:g} MiB", status=413)
            facts = self._probe(path)
            key = entry_key(self.run_id, file_sha256(path), self.sampling)
            with self.jobs_lock:
                job = self.jobs.get(key)
                if key in self.cache:
                    return {"id": key, "state": "ready", "cached": True, **facts}
                if job is not None and job.state in ("queued", "encoding"):
                    return {"id": key, "state": job.state, "cached": False, **facts}
                job = Job(id=key, name=_display_name(name), source=path, upload=path if owned else None)
                if facts["duration"] is not None:
                    job.chunks_total = max(1, math.ceil(facts["duration"] / self.cfg.chunk_seconds - 1e-9))
                try:
                    self.queue.put_nowait(job)
                except queue.Full:
                    raise Busy(f"{self.limits.queue} videos are waiting to be encoded; try again shortly",
                               retry_after=5) from None
                self.jobs[key] = job
                owned = False  # the job deletes it now
                self._prune_jobs()
            return {"id": key, "state": job.state, "cached": False, **facts}
        finally:
            if owned:
                path.unlink(missing_ok=True)

    def _probe(self, path: Path) -> dict:
        """The probe, in the sandbox: Refused / the worker's failure -> UploadError, no place -> Busy."""
        try:
            return self.sandbox.probe(path, self.cfg, self.limits.max_side, self.limits.max_seconds)
        except Refused as error:
            if error.status == 503:
                raise Busy(str(error)) from None
            raise UploadError(str(error), status=error.status) from None
        except SandboxError as error:
            raise UploadError(f"cannot check the file: {error}") from None

    def submit_example(self, name: str) -> dict:
        path = self.examples.get(name)
        if path is None:
            raise NotFound(f"no example named {name!r}; the examples are: {', '.join(sorted(self.examples)) or 'none'}")
        return self.submit_file(path, name, owned=False)

    def example_path(self, name: str) -> Path:
        path = self.examples.get(name)
        if path is None:
            raise NotFound(f"no example named {name!r}")
        return path

    def _prune_jobs(self, keep: int = 512) -> None:
        done = [k for k, j in self.jobs.items() if j.state in ("ready", "failed")]
        for k in done[: max(0, len(self.jobs) - keep)]:
            del self.jobs[k]

    def _silence(self) -> torch.Tensor:
        from mirasol.media.features import audio_features

        samples = round(self.cfg.chunk_seconds * self.cfg.sample_rate)
        return audio_features(np.zeros(samples, dtype=np.float32), self.cfg,
                              num_frames=self.cfg.audio_frames_per_chunk)

    def _work(self) -> None:
        while True:
            job = self.queue.get()
            try:
                self._encode(job)
            except (MirasolError, ValueError, OSError) as error:
                job.state, job.error, job.status = "failed", _reason(error), 422
            except Exception as error:  # a bug: the server keeps serving, the client sees it
                job.state, job.error, job.status = "failed", f"internal error while encoding: {error!r}", 500
            finally:
                if job.upload is not None:
                    job.upload.unlink(missing_ok=True)

    def _encode(self, job: Job) -> None:
        job.state = "encoding"
        cfg, limit = self.cfg, max(1, math.ceil(self.limits.max_seconds / self.cfg.chunk_seconds))
        sessions = {k: self.model.stream(max_context_chunks=self.window) for k in ("full", "no_audio", "no_video")}
        thumbs, starts, valid, has_audio, duration = [], [], [], False, None
        for chunk in self.sandbox.chunks(job.source, cfg, max_chunks=limit + 1):
            if chunk.index >= limit:
                raise UploadError(f"the video is longer than this server's limit of {self.limits.max_seconds:g} s")
            video, audio = chunk.video[None], chunk.audio[None]
            with self.model_lock, torch.inference_mode():
                sessions["full"].push(video, audio)
                sessions["no_audio"].push(video, self.silence[None])
                sessions["no_video"].push(torch.zeros_like(video), audio)
            thumbs.append((chunk.video[0].permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8))
            starts.append(chunk.start)
            valid.append(chunk.valid_seconds)
            has_audio, duration = chunk.has_audio, chunk.duration
            job.chunks_done = chunk.index + 1
            if job.chunks_total is not None and job.chunks_total < job.chunks_done:
                job.chunks_total = job.chunks_done
            if self.chunk_delay:
                time.sleep(self.chunk_delay)
        tensors = {k: s.latents()[0] for k, s in sessions.items()}
        tensors["thumbs"] = torch.stack(thumbs)
        meta = {"name": job.name, "starts": json.dumps(starts), "valid": json.dumps(valid),
                "has_audio": json.dumps(has_audio), "duration": json.dumps(duration),
                "chunk_seconds": json.dumps(cfg.chunk_seconds)}
        self.cache.put(job.id, tensors, meta)
        job.chunks_total = job.chunks_done
        job.state = "ready"

    # --- reading ----------------------------------------------------------------------------
    def _entry(self, video_id: str):
        if not KEY.match(video_id or ""):
            raise NotFound(f"no video with id {video_id!r} (ids are 64 hex digits returned by POST /videos)")
        entry = self.cache.get(video_id)
        if entry is not None:
            return entry
        with self.jobs_lock:
            job = self.jobs.get(video_id)
        if job is None:
            raise NotFound(f"no video with id {video_id}: upload it (again) with POST /videos")
        if job.state == "failed":
            raise UploadError(f"this video could not be encoded: {job.error}", status=job.status or 422)
        raise NotReady(f"the video is still being encoded ({job.chunks_done}"
                       f"{'/' + str(job.chunks_total) if job.chunks_total else ''} chunks); ask again when "
                       f"GET /videos/{video_id} says ready")

    def status(self, video_id: str) -> dict:
        if not KEY.match(video_id or ""):
            raise NotFound(f"no video with id {video_id!r} (ids are 64 hex digits returned by POST /videos)")
        with self.jobs_lock:
            job = self.jobs.get(video_id)
        if job is not None and job.state != "ready":
            return {"id": video_id, "state": job.state, "name": job.name, "chunks_done": job.chunks_done,
                    "chunks_total": job.chunks_total, "error": job.error}
        tensors, meta = self._entry(video_id)
        starts, valid = json.loads(meta["starts"]), json.loads(meta["valid"])
        return {"id": video_id, "state": "ready", "name": meta.get("name"), "chunks_done": len(starts),
                "chunks_total": len(starts), "error": None, "duration": json.loads(meta["duration"]),
                "has_audio": json.loads(meta["has_audio"]),
                "chunks": [{"index": i, "start": s, "end": s + v} for i, (s, v) in enumerate(zip(starts, valid))]}

    def thumbnail(self, video_id: str, index: int) -> bytes:
        tensors, _ = self._entry(video_id)
        thumbs = tensors["thumbs"]
        if not 0 <= index < thumbs.shape[0]:
            raise NotFound(f"chunk {index} does not exist: this video has {thumbs.shape[0]} chunks")
        return _png(thumbs[index].numpy())

    def ask(self, video_id: str, question: str | None, choices: list[str] | None = None,
            evidence: bool = True, modalities: bool = True, max_new_tokens: int | None = None,
            family: str | None = None) -> dict:
        question = (question or "").strip() or None
        max_new_tokens = max_new_tokens or answer_budget(self.stats)
        if question is not None and len(question) > self.limits.max_question_chars:
            raise UploadError(f"the question is {len(question)} characters; at most "
                              f"{self.limits.max_question_chars} are taken")
        if choices is not None:
            choices = [c.strip() for c in choices if c and c.strip()]
            if len(choices) > self.limits.max_choices or any(len(c) > self.limits.max_choice_chars for c in choices):
                raise UploadError(f"at most {self.limits.max_choices} choices of at most "
                                  f"{self.limits.max_choice_chars} characters each")
            if len(choices) == 1:
                raise UploadError("give at least two choices, or none for a free answer")
        if family is not None:
            if choices:
                raise UploadError("give either choices or a family whose training answers to choose among, not both")
            try:
                choices = family_answers(self.stats, family)
            except UsageError as err:
                raise UploadError(str(err)) from None
        tensors, meta = self._entry(video_id)  # unknown (404) or still encoding (409): said even when busy
        if not self.pending.acquire(blocking=False):
            raise Busy(f"{self.limits.max_pending} questions are already waiting; try again shortly")
        try:
            return self._ask(tensors, meta, video_id, question, choices or None, evidence, modalities, max_new_tokens)
        finally:
            self.pending.release()

    def answer_many(self, video_id: str, questions: list[str | None], choices: list[str] | None = None,
                    max_new_tokens: int | None = None) -> list[Answer]:
        """Answers to several questions about one ready video, through the shared batches (the
        entry point for Python callers); raises NotFound / NotReady / UploadError as `ask` does."""
        tensors, _ = self._entry(video_id)
        budget = max_new_tokens or answer_budget(self.stats)
        options = tuple(choices) if choices else None
        if not self.pending.acquire(blocking=False):
            raise Busy(f"{self.limits.max_pending} questions are already waiting; try again shortly")
        try:
            return self.batcher.answer([Request(tensors["full"], (q or "").strip() or None, options, budget,
                                                key=f"{video_id}/full") for q in questions])
        finally:
            self.pending.release()

    def _ask(self, tensors, meta, video_id, question, choices, evidence, modalities, max_new_tokens) -> dict:
        latents = tensors["full"][None]
        starts, valid = json.loads(meta["starts"]), json.loads(meta["valid"])
        out: dict = {"id": video_id, "question": question, "choices": choices}
        options = tuple(choices) if choices else None
        # the answer and its two controls go to the shared batches together
        kinds = ["full", "no_audio", "no_video"] if modalities else ["full"]
        t0 = time.perf_counter()
        answers = self.batcher.answer([Request(tensors[k], question, options, max_new_tokens, key=f"{video_id}/{k}")
                                       for k in kinds])
        out["answer"] = answers[0].text
        out["finish_reason"], out["answer_tokens"] = answers[0].finish_reason, answers[0].tokens
        out["seconds"] = round(time.perf_counter() - t0, 4)
        if modalities:
            out["without_audio"], out["without_video"] = answers[1].text, answers[2].text
        if evidence:
            with self.model_lock, torch.inference_mode():
                t2 = time.perf_counter()
                found = chunk_evidence(self.model, self.tokenizer, latents, question, out["answer"])
                for seg in found["segments"]:
                    seg["start"] = starts[seg["first_chunk"]]
                    seg["end"] = starts[seg["end_chunk"] - 1] + valid[seg["end_chunk"] - 1]
                found["seconds"] = round(time.perf_counter() - t2, 4)
                out["evidence"] = found
        if not json.loads(meta["has_audio"]) and modalities:
            out["note"] = "this video has no audio track: 'without audio' is the same input as the answer's"
        return out


def _display_name(name: str | None) -> str:
    """A client's file name, for display only (never a path): its last component, printable, short."""
    base = (name or "upload").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable())[:120]
    return base or "upload"


def _reason(error: BaseException) -> str:
    """The message of a decoding error without the server's temporary path."""
    from mirasol.media.decode import MediaError

    if isinstance(error, MediaError) and error.reason:
        return error.reason
    return str(error)
