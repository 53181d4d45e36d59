"""Live streams on `mirasol serve`: follow a stream a client names, answer questions about what has
been seen so far, push standing answers and `when` alerts as Server-Sent Events.

    POST   /streams                 {"url", "ask"?, "every"?, "when"?, "window"?, ...} -> {"id", "state"}
    GET    /streams, /streams/{id}  state: video seconds covered, chunks, lag, dropped, how it ended
    POST   /streams/{id}/standing   {"ask"?, "every"?, "when"?}: more standing questions
    GET    /streams/{id}/events     Server-Sent Events: `chunk`, `answer`, `end` (past ones first)
    GET    /streams/{id}/frame.png  the latest frame, as the model saw it
    DELETE /streams/{id}            stop following it (its answers and state are kept)
    questions: POST /videos/{id}/ask and the chat endpoint's mirasol://ID take a stream's id too

Off by default: the operator names the schemes and hosts the server may read with
`--allow-streams` (AllowList); anything else is refused (403; 400 while streams are off).

Who touches what (docs/serving.md): the server process reads the stream's bytes without parsing
them (a UDP socket bound to the URL's address, a TCP connection, an HTTP(S) GET without
redirects) and relays them over a pipe to a sandboxed decoder worker (sandbox.py), which demuxes
and decodes them with media/live.py's forward decoder and sends back each chunk's frames and
log-mel features as raw arrays. So FFmpeg never runs in the server and never opens a connection.
The chunks then go through watch.py's Follower (drop to the newest chunk when the model falls
behind, counted) into the model's streaming session, and watch.py's Standing decides which
standing questions are due, as `mirasol watch` does.
"""

from __future__ import annotations

import collections
import http.client
import json
import math
import multiprocessing
import queue
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np
import torch

from mirasol.errors import MirasolError, UsageError
from mirasol.eval.predict import answer_budget
from mirasol.serve.batcher import Request
from mirasol.serve.service import Busy, NotFound, _png
from mirasol.watch import DEFAULT_MAX_BEHIND_S, Follower, Standing, parse_when

STREAM_ID = re.compile(r"^s[0-9a-f]{16}$")
# what the server can read without parsing media, and the container the decoder is told (None: probed)
RELAYED = {"udp": "mpegts", "tcp": "mpegts", "http": None, "https": None}
DEFAULT_STALL_S = 10.0
DEFAULT_WINDOW = 120  # chunks a stream's model attends to and answers from, when the server has no --window
MAX_STREAMS = 4  # followed at once
MAX_KEPT = 32  # ended streams kept (their state and answers), the oldest forgotten first
MAX_EVENTS = 2000  # past events a new subscriber is sent first
MAX_TIMELINE = 600  # chunks listed in a stream's state
MAX_SUBSCRIBERS = 16  # event subscribers per stream
MAX_STANDING = 8  # standing questions per stream (asks and whens together)
BLOCK = 1 << 16
TICK_S = 0.25  # how often a relay waiting for bytes checks whether to stop


class StreamRefused(MirasolError):
    """A stream request the server refuses; `status` is the HTTP status (400, 403, 422)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Rule:
    scheme: str
    host: str
    port: int | None  # None: any port

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}" + ("" if self.port is None else f":{self.port}")


class AllowList:
    """The streams the operator allows: `scheme://host[:port]` entries, comma-separated (`--allow-streams`);
    no port, or `:*`, allows every port of that host. Hosts are matched exactly (no wildcards, no
    name resolution), so a client cannot reach a host the operator did not name."""

    def __init__(self, text: str | list[str] | None = None):
        entries = text if isinstance(text, list) else [text] if text else []
        self.rules: list[Rule] = []
        for entry in ",".join(entries).split(","):
            if entry.strip():
                self.rules.append(self._rule(entry.strip()))

    @staticmethod
    def _rule(entry: str) -> Rule:
        example = "e.g. --allow-streams udp://127.0.0.1,tcp://127.0.0.1:*,https://cams.example.org:8443"
        any_port = entry.endswith(":*")
        parts = urlsplit(entry[:-2] if any_port else entry)
        scheme = parts.scheme.lower()
        if scheme not in RELAYED:
            raise UsageError(f"--allow-streams {entry}: the scheme must be one of {', '.join(RELAYED)} ({example})")
        try:
            host, port = parts.hostname, parts.port
        except ValueError:
            raise UsageError(f"--allow-streams {entry}: not scheme://host[:port] ({example})") from None
        if not host or host == "*" or (parts.path not in ("", "/")) or parts.query:
            raise UsageError(f"--allow-streams {entry}: name a host (and a port, or * for any) and nothing "
                             f"else ({example})")
        return Rule(scheme, host.lower(), None if any_port else port)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def __str__(self) -> str:
        return ",".join(map(str, self.rules))

    def allows(self, scheme: str, host: str, port: int | None) -> bool:
        return any(r.scheme == scheme and r.host == host and (r.port is None or r.port == port) for r in self.rules)

    def check(self, url: str) -> tuple[str, str, int]:
        """(scheme, host, port) of an allowed URL; StreamRefused naming the URL and the flag otherwise."""
        if not self.rules:
            raise StreamRefused(f"live streams are off on this server: it follows {url!r} only when started with "
                                f"--allow-streams naming that scheme and host (e.g. --allow-streams "
                                f"{_rule_for(url)})", status=400)
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in RELAYED:
            raise StreamRefused(f"{url!r}: the server follows {', '.join(RELAYED)} streams only", status=400)
        try:
            host, port = (parts.hostname or "").lower(), parts.port
        except ValueError:
            raise StreamRefused(f"{url!r}: not a stream URL (scheme://host:port...)", status=400) from None
        port = port or {"http": 80, "https": 443}.get(scheme)
        if not host or port is None:
            raise StreamRefused(f"{url!r}: name a host and a port", status=400)
        if not self.allows(scheme, host, port):
            raise StreamRefused(f"{url!r} is not among the streams this server may follow (--allow-streams "
                                f"{self}); the operator can allow it with --allow-streams {_rule_for(url)}",
                                status=403)
        return scheme, host, port


def _rule_for(url: str) -> str:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or "HOST"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme.lower() or 'udp'}://{host}" + (f":{port}" if port else "")


# --- the relay: bytes in, unparsed ---------------------------------------------------------------
class _Ended(Exception):
    """The relay stopped reading; its message is the stream's reason, `state` its state."""

    def __init__(self, message: str, state: str = "ended"):
        super().__init__(message)
        self.state = state


def _blocks(scheme: str, host: str, port: int, url: str, stall_s: float, stopping: threading.Event):
    """The stream's bytes as they arrive (b"" about every TICK_S while none do); raises _Ended."""
    if scheme == "udp":
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            try:
                sock.bind((host, port))
            except OSError as error:
                raise _Ended(f"cannot listen on {host}:{port} for the stream ({error.strerror or error})",
                             "failed") from None
            sock.settimeout(TICK_S)
            while not stopping.is_set():
                try:
                    yield sock.recv(BLOCK)
                except socket.timeout:
                    yield b""
        return
    if scheme == "tcp":
        try:
            sock = socket.create_connection((host, port), timeout=stall_s)
        except OSError as error:
            raise _Ended(f"cannot connect to {host}:{port} ({error.strerror or error})", "failed") from None
        with sock:
            sock.settimeout(TICK_S)
            while not stopping.is_set():
                try:
                    data = sock.recv(BLOCK)
                except socket.timeout:
                    yield b""
                    continue
                except OSError as error:
                    raise _Ended(f"the connection failed ({error.strerror or error})") from None
                if not data:
                    raise _Ended("the source closed the connection")
                yield data
        return
    parts = urlsplit(url)
    kind = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    connection = kind(host, port, timeout=stall_s)
    try:
        try:
            connection.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                               headers={"User-Agent": "mirasol-serve"})
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as error:
            raise _Ended(f"cannot fetch {url} ({error})", "failed") from None
        if response.status != 200:
            where = response.getheader("Location")
            raise _Ended(f"the server answered HTTP {response.status}"
                         + (f" (a redirect to {where}, which is not followed)" if where else ""), "failed")
        while not stopping.is_set():
            try:
                data = response.read1(BLOCK)
            except socket.timeout:
                raise _Ended(f"stalled: nothing arrived for {stall_s:g} s", "stalled") from None
            except (OSError, http.client.HTTPException) as error:
                raise _Ended(f"the download failed ({error})") from None
            if not data:
                raise _Ended("the source closed the connection")
            yield data
    finally:
        connection.close()


# --- one stream ------------------------------------------------------------------------------------
@dataclass
class Stream:
    id: str
    url: str
    window: int | None
    stall_s: float
    started: float = field(default_factory=time.time)
    state: str = "connecting"  # connecting | live | ended | stalled | failed | stopped
    reason: str | None = None
    bytes_in: int = 0
    chunks: int = 0
    video_seconds: float = 0.0
    lag_seconds: float | None = None
    decoder_pid: int | None = None
    timeline: collections.deque = field(default_factory=lambda: collections.deque(maxlen=MAX_TIMELINE))
    events: collections.deque = field(default_factory=lambda: collections.deque(maxlen=MAX_EVENTS))
    answers: list = field(default_factory=list)
    frame: np.ndarray | None = None
    latents: torch.Tensor | None = None  # [T, m, D] after the latest chunk
    standing: Standing | None = None
    follower: Follower | None = None
    subscribers: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def running(self) -> bool:
        return self.state in ("connecting", "live")

    def summary(self, timeline: bool = False) -> dict:
        out = {"id": self.id, "url": self.url, "state": self.state, "reason": self.reason,
               "video_seconds": round(self.video_seconds, 3), "chunks": self.chunks,
               "dropped": self.follower.dropped if self.follower else 0,
               "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
               "bytes": self.bytes_in, "window": self.window, "started": round(self.started, 3),
               "standing": {"ask": list(self.standing.asks) if self.standing else [],
                            "every": self.standing.every if self.standing else None,
                            "when": [f"{q}={a}" for q, a in self.standing.whens] if self.standing else []},
               "answers": len(self.answers)}
        if timeline:
            out["timeline"] = list(self.timeline)
            out["recent_answers"] = self.answers[-50:]
        return out


class Streams:
    """The server's streams: started on request, each followed by its own threads (the relay,
    the decoder's reader and the model's consumer); the model runs under the service's lock."""

    def __init__(self, service, allow: AllowList | None = None, max_streams: int = MAX_STREAMS,
                 max_behind: float = DEFAULT_MAX_BEHIND_S):
        self.service, self.allow = service, allow or AllowList()
        self.max_streams, self.max_behind = max_streams, max_behind
        self.streams: dict[str, Stream] = {}
        self.lock = threading.Lock()
        service.streams = self

    def running(self) -> int:
        return sum(s.running for s in self.streams.values())

    def info(self) -> dict:
        return {"allowed": [str(r) for r in self.allow.rules], "schemes": list(RELAYED),
                "max_streams": self.max_streams, "default_window": self._default_window()}

    def _default_window(self) -> int:
        return self.service.window or DEFAULT_WINDOW

    # --- requests -------------------------------------------------------------------------------
    def start(self, url: str, asks: list[str] | None = None, every: float | None = None,
              whens: list[str] | None = None, window: int | None = None, stall_timeout: float | None = None,
              silent: bool = False) -> dict:
        url = (url or "").strip()
        if len(url) > 2000:
            raise StreamRefused("the URL is longer than 2000 characters")
        scheme, host, port = self.allow.check(url)
        stall_s = DEFAULT_STALL_S if stall_timeout is None else float(stall_timeout)
        longest = self.service.limits.decoder_wall_s  # past it, the sandbox ends the silent decoder anyway
        if not (math.isfinite(stall_s) and 0.5 <= stall_s <= longest):
            raise StreamRefused(f"stall_timeout takes 0.5 to {longest:g} seconds, got {stall_s:g}", status=422)
        if window is not None and not 1 <= window <= 10_000:
            raise StreamRefused(f"window takes 1 to 10000 chunks, got {window}", status=422)
        stream = Stream(id="s" + secrets.token_hex(8), url=url, window=window or self._default_window(),
                        stall_s=stall_s)
        stream.standing = Standing(every=self.service.cfg.chunk_seconds)
        self._add_standing(stream, asks, every, whens)
        with self.lock:
            if self.running() >= self.max_streams:
                raise Busy(f"this server follows at most {self.max_streams} streams at once; stop one "
                           f"(DELETE /streams/ID) or try again later", retry_after=10)
            self.streams[stream.id] = stream
            self._prune()
        threading.Thread(target=self._follow, args=(stream, scheme, host, port, silent), daemon=True,
                         name=f"mirasol-stream-{stream.id}").start()
        return stream.summary()

    def add_standing(self, stream_id: str, asks=None, every=None, whens=None) -> dict:
        stream = self.get(stream_id)
        self._add_standing(stream, asks, every, whens)
        return stream.summary()

    def _add_standing(self, stream: Stream, asks, every, whens) -> None:
        limits, standing = self.service.limits, stream.standing
        asks = [q.strip() for q in asks or [] if q and q.strip()]
        try:
            pairs = [parse_when(w) for w in whens or []]
        except UsageError as error:
            raise StreamRefused(str(error).replace("--when", "when"), status=422) from None
        if any(len(q) > limits.max_question_chars for q in asks + [q for q, _ in pairs]):
            raise StreamRefused(f"a question is longer than {limits.max_question_chars} characters", status=422)
        if len(standing.asks) + len(standing.whens) + len(asks) + len(pairs) > MAX_STANDING:
            raise StreamRefused(f"a stream takes at most {MAX_STANDING} standing questions", status=422)
        if every is not None:
            if not (isinstance(every, (int, float)) and math.isfinite(every) and every > 0):
                raise StreamRefused(f"every takes a positive number of seconds, got {every!r}", status=422)
            standing.next_at += every - standing.every
            standing.every = float(every)
        standing.asks += [q for q in asks if q not in standing.asks]
        standing.whens += [p for p in pairs if p not in standing.whens]

    def get(self, stream_id: str) -> Stream:
        stream = self.streams.get(stream_id) if STREAM_ID.match(stream_id or "") else None
        if stream is None:
            raise NotFound(f"no stream with id {stream_id!r} (ids are returned by POST /streams; "
                           f"GET /streams lists them)")
        return stream

    def summaries(self) -> list[dict]:
        return [s.summary() for s in self.streams.values()]

    def stop(self, stream_id: str) -> dict:
        stream = self.get(stream_id)
        if stream.running:
            stream.reason = "stopped by DELETE /streams/" + stream.id
            stream.state = "stopped"
            stream.stopping.set()
            if stream.follower is not None:
                stream.follower.stop()
        return stream.summary()

    def frame(self, stream_id: str) -> bytes:
        stream = self.get(stream_id)
        if stream.frame is None:
            raise NotFound(f"stream {stream_id} has no chunk yet")
        return _png(stream.frame)

    def ask(self, stream_id: str, question: str | None, choices: list[str] | None = None,
            window: int | None = None, max_new_tokens: int | None = None) -> dict:
        stream = self.get(stream_id)
        question, limits = (question or "").strip() or None, self.service.limits
        if question is not None and len(question) > limits.max_question_chars:
            raise StreamRefused(f"the question is {len(question)} characters; at most "
                                f"{limits.max_question_chars} are taken", status=422)
        choices = [c.strip() for c in choices or [] if c and c.strip()] or None
        if choices is not None and not (2 <= len(choices) <= limits.max_choices
                                        and all(len(c) <= limits.max_choice_chars for c in choices)):
            raise StreamRefused(f"give 2 to {limits.max_choices} choices of at most {limits.max_choice_chars} "
                                f"characters each, or none for a free answer", status=422)
        with stream.lock:
            latents, seconds, chunks = stream.latents, stream.video_seconds, stream.chunks
        if latents is None:
            raise StreamRefused(f"stream {stream_id} has no chunk yet ({stream.state}"
                                + (f": {stream.reason}" if stream.reason else "") + "); ask again shortly",
                                status=409)
        if window is not None:
            if window < 1:
                raise StreamRefused(f"window takes a number of chunks >= 1, got {window}", status=422)
            latents = latents[-window:]
        if not self.service.pending.acquire(blocking=False):
            raise Busy(f"{self.service.limits.max_pending} questions are already waiting; try again shortly")
        try:
            [answer] = self.service.batcher.answer([Request(
                latents, question, tuple(choices) if choices else None,
                max_new_tokens or answer_budget(self.service.stats), key=f"{stream.id}/{chunks}/{len(latents)}")])
        finally:
            self.service.pending.release()
        return {"id": stream_id, "question": question, "choices": choices, "answer": answer.text,
                "finish_reason": answer.finish_reason, "answer_tokens": answer.tokens,
                "video_seconds": round(seconds, 3), "chunks": chunks, "window_chunks": int(latents.shape[0]),
                "state": stream.state}

    def events(self, stream_id: str, keepalive_s: float = 15.0):
        """Server-Sent Events: the past ones, then each new one; ends after the stream's `end`."""
        stream = self.get(stream_id)
        inbox: queue.Queue = queue.Queue()
        with stream.lock:
            if len(stream.subscribers) >= MAX_SUBSCRIBERS:
                raise Busy(f"stream {stream_id} has {MAX_SUBSCRIBERS} event subscribers already")
            past = list(stream.events)
            stream.subscribers.append(inbox)

        def generate():
            try:
                for event in past:
                    yield _sse(event)
                    if event["event"] == "end":
                        return
                while True:
                    try:
                        event = inbox.get(timeout=keepalive_s)
                    except queue.Empty:
                        yield ": keep-alive\n\n"
                        continue
                    yield _sse(event)
                    if event["event"] == "end":
                        return
            finally:
                with stream.lock:
                    if inbox in stream.subscribers:
                        stream.subscribers.remove(inbox)

        return generate()

    # --- following ------------------------------------------------------------------------------
    def _publish(self, stream: Stream, name: str, data: dict) -> None:
        event = {"event": name, "data": data}
        with stream.lock:
            stream.events.append(event)
            for inbox in stream.subscribers:
                inbox.put(event)

    def _prune(self) -> None:
        ended = [k for k, s in self.streams.items() if not s.running]
        for k in ended[: max(0, len(ended) - MAX_KEPT)]:
            del self.streams[k]

    def _follow(self, stream: Stream, scheme: str, host: str, port: int, silent: bool) -> None:
        service = self.service
        ctx = multiprocessing.get_context("forkserver")
        media_in, media_out = ctx.Pipe(duplex=False)
        ended: list[_Ended] = []
        relay = threading.Thread(target=self._relay, args=(stream, scheme, host, port, media_out, ended),
                                 daemon=True, name=f"mirasol-relay-{stream.id}")
        relay.start()
        chunks = service.sandbox.live_chunks(media_in, service.cfg, stream.url, RELAYED[scheme],
                                             service.limits.max_side, silent=silent,
                                             on_start=lambda pid: setattr(stream, "decoder_pid", pid))
        stream.follower = follower = Follower(chunks, live=True)
        session = service.model.stream(max_context_chunks=stream.window, keep_latents=stream.window)
        follower.start()
        ending = None
        try:
            ending = follower.run(lambda live: self._take(stream, session, live), self.max_behind)
        except Exception as error:  # a bug: this stream ends with it, the server goes on
            ending = error
        finally:
            follower.stop()
            stream.stopping.set()
            relay.join(5)
            media_in.close()  # already the worker's where one started
        if stream.state != "stopped":
            if ended:  # the relay saw how the source ended (closed, stalled, unreachable)
                state, reason = ended[0].state, str(ended[0])
            elif ending is not None:  # the decoder's reason (no media, refused, crashed, a limit)
                state, reason = "failed", _reason(ending)
            else:
                state, reason = "ended", "the stream ended"
            if state == "ended" and not stream.chunks:
                state = "failed"
            stream.state = state
            stream.reason = f"{reason} (after {stream.video_seconds:g} s of video, {stream.chunks} chunks)"
        self._publish(stream, "end", stream.summary())

    def _relay(self, stream: Stream, scheme: str, host: str, port: int, media_out, ended: list) -> None:
        last = time.monotonic()
        try:
            for data in _blocks(scheme, host, port, stream.url, stream.stall_s, stream.stopping):
                now = time.monotonic()
                if data:
                    media_out.send_bytes(data)
                    stream.bytes_in += len(data)
                    last = now
                elif now - last > stream.stall_s:
                    raise _Ended(f"stalled: nothing arrived for {stream.stall_s:g} s", "stalled")
        except _Ended as error:
            ended.append(error)
        except OSError:
            pass  # the decoder is gone (it failed, or the stream was stopped): its reason is said
        finally:
            media_out.close()

    def _take(self, stream: Stream, session, live) -> None:
        service, chunk = self.service, live.chunk
        with service.model_lock, torch.inference_mode():
            session.push(chunk.video[None], chunk.audio[None])
            latents = session.latents()[0]
        frame = (chunk.video[-1].permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
        now = time.time()
        with stream.lock:
            stream.latents, stream.frame = latents, frame
            stream.chunks += 1
            stream.video_seconds = chunk.end
            stream.lag_seconds = now - live.arrived
            if stream.state == "connecting":
                stream.state = "live"
            entry = {"index": chunk.index, "start": chunk.start, "end": chunk.end,
                     "lag_seconds": round(stream.lag_seconds, 3), "dropped": stream.follower.dropped}
            stream.timeline.append(entry)
        self._publish(stream, "chunk", {**entry, "video_seconds": round(chunk.end, 3), "chunks": stream.chunks})

        def answer(question: str) -> str:
            [out] = service.batcher.answer([Request(latents, question, None, answer_budget(service.stats),
                                                    key=f"{stream.id}/{stream.chunks}")])
            return out.text

        for kind, question, text, extra in stream.standing.after_chunk(chunk, chunk.end, answer):
            now = time.time()
            line = {"video_seconds": round(chunk.end, 3), "kind": kind, "question": question, "answer": text,
                    "wall_time": round(now, 3), "lag_seconds": round(now - live.arrived, 3),
                    "chunks": stream.chunks, "dropped": stream.follower.dropped, **(extra or {})}
            stream.answers.append(line)
            self._publish(stream, "answer", line)


def _sse(event: dict) -> str:
    return f"event: {event['event']}\ndata: {json.dumps(event['data'])}\n\n"


def _reason(error: BaseException) -> str:
    from mirasol.media.decode import MediaError

    if isinstance(error, MediaError) and error.reason:
        return error.reason
    return str(error) or type(error).__name__
