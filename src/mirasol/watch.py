"""`mirasol watch --run RUN SOURCE`: follow a live video and answer questions about it as it plays.

SOURCE (a growing file, a network stream, a v4l2 device or a finished file; media/live.py) is
decoded forward, once, in a reader thread; each chunk goes into the model's streaming session
(model/stream.py) as soon as its seconds have arrived. Then:

- `--ask Q --every S`: Q is answered each time another S seconds of video have been seen, about
  all of it (or the last `--window` chunks);
- `--when "Q=A"`: Q is asked after every chunk; the first chunk after which the answer is A is
  reported once, with the seconds that chunk covers;
- a question typed on standard input is answered at once, about what has been seen so far.

Falling behind (policy): when the model is slower than a live source, chunks wait in a queue.
Once the oldest waiting chunk has waited more than `max_behind` seconds (`--max-behind`, default
DEFAULT_MAX_BEHIND_S), only the newest is pushed and the others are dropped and counted (their
seconds are missing from the model's memory), so the answers stay close to live instead of
building a backlog; a burst that the model clears in time (a stream's start) loses nothing. A
finished file is never dropped from: its reader waits for the model.

Exit status: 0 when `--until` is reached or a file ends; EXIT_ENDED when a live source closes or
fails; EXIT_STALLED when it sends nothing for `--stall-timeout` seconds; EXIT_NO_AUDIO when it has
no audio stream (unless `--silent`). Each ends in one line on standard error; what was answered
before stays printed.
"""

from __future__ import annotations

import json
import math
import queue
import sys
import threading
import time
from dataclasses import dataclass, field

from mirasol.errors import UsageError

DEFAULT_MAX_BEHIND_S = 2.0
EXIT_ENDED = 3
EXIT_STALLED = 4
EXIT_NO_AUDIO = 5
# The reader of a finished file runs at most this many chunks ahead of the model.
FILE_QUEUE_CHUNKS = 2


@dataclass
class WatchResult:
    status: int
    lines: list[dict] = field(default_factory=list)
    chunks: int = 0  # pushed into the model
    dropped: int = 0
    video_seconds: float = 0.0
    wall_seconds: float = 0.0
    message: str | None = None


def parse_when(text: str) -> tuple[str, str]:
    """'question=answer' -> (question, answer)."""
    question, sep, answer = text.rpartition("=")
    if not sep or not question.strip() or not answer.strip():
        raise UsageError(f'--when takes "question=answer", e.g. --when "what color is the object?=red"; got {text!r}')
    return question.strip(), answer.strip()


def _same(answer: str, expected: str) -> bool:
    return answer.strip().lower().rstrip(".") == expected.strip().lower().rstrip(".")


class _Answerer:
    """Answers questions from a stream's latents, as `ask --at` does (prompts built once each)."""

    def __init__(self, model, tokenizer, stats, source: str):
        self.model, self.tokenizer, self.stats, self.source = model, tokenizer, stats, source
        self.prompts: dict[str, tuple] = {}

    def __call__(self, session, question: str) -> str:
        from mirasol.ask import _prompt
        from mirasol.eval.predict import answer_budget, predict_from_memory

        if question not in self.prompts:
            self.prompts[question] = _prompt(self.model, self.tokenizer, self.source, question, self.stats)
        sample, prompt_ids = self.prompts[question]
        [text] = predict_from_memory(self.model, self.tokenizer, session.latents().flatten(1, 2), prompt_ids,
                                     [sample], labels=self.stats.get("labels"),
                                     max_new_tokens=answer_budget(self.stats))
        return text


class Standing:
    """Standing questions over a stream, checked after every chunk pushed: each of `asks` answered
    each time another `every` seconds of video have been seen; each `when` (question, answer)
    asked after every chunk until its answer is that, then reported once with the chunk. Shared
    by `mirasol watch` and the server's streams; questions may be added while it runs."""

    def __init__(self, asks: list[str] | None = None, every: float = 1.0,
                 whens: list[tuple[str, str]] | None = None):
        self.asks, self.every, self.whens = list(asks or []), every, list(whens or [])
        self.next_at, self.answered_at = every, 0.0

    def after_chunk(self, chunk, video_seconds: float, answer) -> list[tuple[str, str, str, dict | None]]:
        """(kind, question, answer, extra) for what is due now that `chunk` is in; `answer(question)`."""
        due = []
        for question, expected in list(self.whens):
            text = answer(question)
            if _same(text, expected):
                self.whens.remove((question, expected))
                due.append(("when", question, text,
                            {"chunk": chunk.index, "chunk_start": chunk.start, "chunk_end": chunk.end}))
        if self.asks and video_seconds >= self.next_at - 1e-6:
            for question in list(self.asks):
                due.append(("ask", question, answer(question), None))
            self.answered_at = video_seconds
            # once for every point passed (after a drop, several), then the next one ahead
            self.next_at += self.every * max(1, math.floor((video_seconds - self.next_at) / self.every + 1e-6) + 1)
        return due


class Follower:
    """Reads a live source's chunks in a thread and hands them to a consumer in order; when the
    consumer falls more than `max_behind` seconds behind a live source, it gets the newest chunk
    only and the ones skipped are counted (the policy of the module doc). `live=False` (a finished
    file) keeps the reader at most FILE_QUEUE_CHUNKS ahead and never drops."""

    def __init__(self, chunks, live: bool, until: float | None = None):
        self.chunks, self.live, self.until = chunks, live, until
        self.items: queue.Queue = queue.Queue(maxsize=0 if live else FILE_QUEUE_CHUNKS)
        self.stopping = threading.Event()
        self.dropped = 0
        self.reader = threading.Thread(target=self._read, daemon=True)

    def start(self) -> None:
        self.reader.start()

    def stop(self) -> None:
        self.stopping.set()

    def _put(self, item) -> bool:
        while not self.stopping.is_set():
            try:
                self.items.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def _read(self) -> None:
        try:
            for item in self.chunks:
                if not self._put(("chunk", item)):
                    break
                if self.until is not None and item.chunk.end >= self.until - 1e-6:
                    self._put(("end", None))
                    self.stopping.wait()  # closing the source (a network one can take seconds) waits for the answers
                    return
            self._put(("end", None))
        except BaseException as error:  # handed to the consumer, which says it
            self._put(("end", error))
        finally:
            self.chunks.close()

    def run(self, on_chunk, max_behind: float, ready: float | None = None, idle=None, on_drop=None):
        """Call `on_chunk(live_chunk)` for each chunk taken, `idle()` about every 50 ms and
        `on_drop(skipped, behind_s)` after a drop, until the source ends or `stop()`. Returns how
        it ended: None (its end, or `until`) or the error that ended it. `ready`: wall time before
        which waiting does not count as behind (the model was loading)."""
        ready = time.time() if ready is None else ready
        while not self.stopping.is_set():
            try:
                tag, payload = self.items.get(timeout=0.05)
            except queue.Empty:
                tag = None
            if idle is not None:
                idle()
            if tag is None:
                continue
            if tag == "end":
                return payload
            skipped, behind_s = 0, time.time() - max(payload.arrived, ready)
            behind = self.live and behind_s > max_behind
            while behind and not self.items.empty():  # too far behind live: keep only the newest chunk
                tag2, newer = self.items.get()
                if tag2 == "end":
                    self.items.put((tag2, newer))  # said after this chunk
                    break
                payload, skipped = newer, skipped + 1
            if skipped:
                self.dropped += skipped
                if on_drop is not None:
                    on_drop(skipped, behind_s)
            on_chunk(payload)
        return None


def _read_questions(stream, out: queue.Queue) -> None:
    try:
        for line in stream:
            if line.strip():
                out.put(line.strip())
    except (OSError, ValueError):
        pass  # no readable standard input: no typed questions


def watch(run: str, source: str, asks: list[str] | None = None, every: float | None = None,
          whens: list[tuple[str, str]] | None = None, window: int | None = None, until: float | None = None,
          realtime: bool = False, follow: bool | None = None, stall_timeout: float = 10.0, silent: bool = False,
          max_behind: float = DEFAULT_MAX_BEHIND_S,
          as_json: bool = False, out=None, log=None, stdin=None) -> WatchResult:
    """Watch `source` with the run's model; print each answer to `out` (a line, or a JSON object a
    line) and notes to `log`. Returns the result with its exit status (see the module doc)."""
    from mirasol.media.decode import MediaError, NoAudioError
    from mirasol.media.live import SourceEnded, SourceStalled, live_chunks, source_kind
    from mirasol.run_config import load_run_config
    from mirasol.run_dir import check_run_dir, load_run

    out = sys.stdout if out is None else out
    asks, whens = list(asks or []), list(whens or [])
    if every is not None and every <= 0:
        raise UsageError(f"--every takes a positive number of seconds, got {every:g}")
    if until is not None and until <= 0:
        raise UsageError(f"--until takes a positive number of seconds, got {until:g}")
    if window is not None and window < 1:
        raise UsageError(f"--window takes a number of chunks >= 1, got {window}")
    if max_behind < 0:
        raise UsageError(f"--max-behind takes seconds >= 0, got {max_behind:g}")
    if stall_timeout <= 0:
        raise UsageError(f"--stall-timeout takes a positive number of seconds, got {stall_timeout:g}")

    kind = source_kind(source, follow)
    cfg = load_run_config(check_run_dir(run)).model  # the media settings, read before the weights
    chunks = live_chunks(source, cfg, realtime=realtime, follow=kind == "growing", stall_timeout=stall_timeout,
                         silent_ok=silent, until=until)  # opens nothing until iterated
    live = kind != "file" or realtime
    follower = Follower(chunks, live, until)
    typed: queue.Queue = queue.Queue()
    if stdin is not None:
        threading.Thread(target=_read_questions, args=(stdin, typed), daemon=True).start()
    result = WatchResult(status=0)
    follower.start()  # a live source is opened (and buffered) while the model loads
    try:
        model, tokenizer, stats, _ = load_run(run)
    except BaseException:
        follower.stop()
        raise
    model.eval()
    standing = Standing(asks, cfg.chunk_seconds if every is None else every, whens)
    answerer = _Answerer(model, tokenizer, stats, source)
    session = model.stream(max_context_chunks=window, keep_latents=window)
    ready = time.time()  # chunks that waited for the model to load are not "behind"
    latest = None

    def emit(kind_: str, question: str, text: str, extra: dict | None = None) -> None:
        now = time.time()
        line = {"video_seconds": round(result.video_seconds, 3), "kind": kind_, "question": question,
                "answer": text, "wall_time": round(now, 3), "lag_seconds": round(now - latest.arrived, 3),
                "chunks": session.chunks, "dropped": follower.dropped, **(extra or {})}
        result.lines.append(line)
        if as_json:
            print(json.dumps(line), file=out, flush=True)
        else:
            where = f" (chunk {extra['chunk']}: {extra['chunk_start']:g}-{extra['chunk_end']:g} s)" if extra else ""
            print(f"[{result.video_seconds:g} s] {question} -> {text}{where}", file=out, flush=True)

    def typed_questions() -> None:
        while latest is not None and not typed.empty():
            question = typed.get()
            emit("typed", question, answerer(session, question))

    def dropped(skipped: int, behind_s: float) -> None:
        if log is not None:
            print(f"note: {behind_s:.1f} s behind live; "
                  f"dropped {skipped} chunk(s) ({follower.dropped} in all) to catch up", file=log, flush=True)

    def take(live_chunk) -> None:
        nonlocal latest
        latest = live_chunk
        chunk = live_chunk.chunk
        session.push(chunk.video[None], chunk.audio[None])
        result.chunks += 1
        result.video_seconds = chunk.end
        for kind_, question, text, extra in standing.after_chunk(chunk, result.video_seconds,
                                                                 lambda q: answerer(session, q)):
            emit(kind_, question, text, extra)

    try:
        ending = follower.run(take, max_behind, ready=ready, idle=typed_questions, on_drop=dropped)
    finally:
        follower.stop()
        result.wall_seconds = time.time() - ready
        result.dropped = follower.dropped
    if ending is None:
        if asks and result.video_seconds > standing.answered_at + 1e-6 and (until is None or result.video_seconds < until):
            for question in asks:  # the end of a file: answer about all of it
                emit("ask", question, answerer(session, question))
        return result
    if isinstance(ending, NoAudioError):
        result.status = EXIT_NO_AUDIO
    elif isinstance(ending, SourceStalled):
        result.status = EXIT_STALLED
    elif isinstance(ending, SourceEnded):
        result.status = EXIT_ENDED
    elif isinstance(ending, MediaError) and result.chunks:
        result.status = EXIT_ENDED
    else:
        raise ending
    result.message = str(ending)
    return result
