"""Decode untrusted media in a separate, limited process: the server's sandbox (docs/serving.md).

Every upload is probed and decoded (frames + audio features) by FFmpeg's C code. That code runs
here, in a worker process forked for that one file from a clean fork server (started once, with
the decoding modules preloaded, never the server's threads or model), never in the server:

- limits: address space (RLIMIT_AS: the worker's size at start plus `memory_mb`), CPU time
  (RLIMIT_CPU), wall time (the server waits at most `wall_s` for each reply, then kills it), no
  core files, no files written, few open files;
- no network: FFmpeg may open the `file` protocol only; and where unprivileged user namespaces
  work, the worker moves into a new user and network namespace (no interface but a down
  loopback) and chroots into a folder that holds only its upload, then drops every capability,
  so it reads that file and nothing else. Where namespaces are not available the server logs it
  once and runs with the limits alone;
- results come back as raw arrays over a pipe, checked against the shapes the model expects
  (never unpickled: a worker taken over by a hostile file cannot run code in the server).

A live stream a client names is decoded here too (`Sandbox.live_chunks`): the server relays the
stream's bytes, read without parsing them, over a pipe, and the worker demuxes and decodes them
from that pipe (media/live.py's forward decoder), so the decoder never opens a connection and
keeps the same limits, namespaces and chroot; its CPU limit is `stream_cpu_s`, as a stream runs
for hours.

A worker that crashes (a signal), hangs, passes a limit or fails in any way ends that upload with
a reason (`SandboxError`, which the service answers as 422 / `failed: reason`); the server and
every other upload go on. The model encoding stays in the server.

Tests can make a worker crash or hang at a given chunk (`MIRASOL_SANDBOX_TEST_HOOK=segfault@1`,
`hang@0`, `hang-probe`, `spin-probe`), honoured only where `MIRASOL_TESTING=1` is set too.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import multiprocessing
import os
import resource
import secrets
import shutil
import signal
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch

from mirasol.config import MirasolConfig
from mirasol.errors import MirasolError
from mirasol.media.chunk_reader import iter_chunks
from mirasol.media.clip import MediaChunk
from mirasol.media.decode import MediaError, decode_media
from mirasol.media.live import LiveChunk, live_chunks_from

log = logging.getLogger("mirasol.serve")


def _preload() -> None:
    """Import now what PyAV imports lazily: a confined worker sees no files to import from."""
    import encodings.latin_1  # noqa: F401  (metadata of any text encoding)
    import pkgutil

    for module in pkgutil.walk_packages(av.__path__, "av."):
        try:
            __import__(module.name)
        except ImportError:
            pass


_preload()

# FFmpeg demuxer names accepted (container.format.name is a comma-separated list of aliases)
ALLOWED_FORMATS = {"mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi", "ogg", "flv",
                   "mpegts", "mpeg"}
FFMPEG_OPTIONS = {"protocol_whitelist": "file"}  # nothing FFmpeg opens on a file's behalf reaches the network
JAIL_FILE = "media"
HOOK_ENV, TESTING_ENV = "MIRASOL_SANDBOX_TEST_HOOK", "MIRASOL_TESTING"
_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS, _M_ARENA_MAX = 1, 38, -8
_HEADER = struct.Struct("<I")  # the length of a message's JSON header; raw array bytes follow it


class SandboxError(MirasolError):
    """The worker could not use the file (its reason), or was ended (crash, hang, limit)."""


class Refused(MirasolError):
    """The probe refuses a file: `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass
class SandboxLimits:
    memory_mb: int = 2048  # address space beyond the worker's own at start
    cpu_s: int = 600  # CPU seconds of one worker (a probe, or the decoding of a whole video)
    wall_s: float = 60.0  # the longest wait for one reply (the probe, or the next chunk)
    probes: int = 2  # probes at once; an upload waits up to wall_s for a place, then Busy
    stream_cpu_s: int = 24 * 3600  # CPU seconds of one live stream's decoder (the wall limit still holds per chunk)


# --- the checks, run in the worker (or in-process without a sandbox) --------------------------------------
def sniff_container(head: bytes) -> str | None:
    """The container a file's first bytes announce, or None (not a video container the decoder reads)."""
    if len(head) >= 12 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"):
        return "mp4/mov"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska/webm"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:3] == b"FLV":
        return "flv"
    if len(head) >= 189 and head[0] == 0x47 and head[188] == 0x47:
        return "mpeg-ts"
    if head[:4] == b"\x00\x00\x01\xba":
        return "mpeg-ps"
    return None


def probe_file(path: str | os.PathLike, cfg: MirasolConfig, max_side: int, max_seconds: float) -> dict:
    """Check a file before encoding it: container, a video stream, frame size, duration, and that its
    first chunk decodes exactly as the encoder will decode it (so what the probe accepts encodes).
    Raises Refused with the reason."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        raise Refused("the file is empty (0 bytes)")
    kind = sniff_container(head)
    if kind is None:
        raise Refused("not a video file: the content is none of MP4/MOV, Matroska/WebM, AVI, Ogg, FLV or "
                      "MPEG-TS/PS (the file name does not matter)")
    try:
        container = av.open(os.fspath(path), metadata_errors="ignore", options=dict(FFMPEG_OPTIONS))
    except (av.FFmpegError, OSError, ValueError) as error:
        raise Refused(f"cannot read the file as a video ({kind}): {_ffmpeg_reason(error)}") from None
    try:
        if not set(container.format.name.split(",")) & ALLOWED_FORMATS:
            raise Refused(f"unsupported container {container.format.name!r}")
        streams = [s for s in container.streams.video
                   if not s.disposition & (av.stream.Disposition.attached_pic | av.stream.Disposition.timed_thumbnails)]
        if not streams:
            raise Refused("the file has no video stream")
        stream = streams[0]
        if stream.codec_context is None:  # damaged headers: FFmpeg found no decoder for the stream
            raise Refused("the video stream's codec is unknown or its header is damaged")
        width, height = stream.codec_context.width, stream.codec_context.height
        if width > max_side or height > max_side:
            raise Refused(f"frames of {width}x{height} are larger than this server's limit of "
                          f"{max_side}x{max_side} pixels")
        duration = None
        if container.duration is not None and container.duration > 0:
            duration = container.duration / av.time_base
        elif stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        if duration is not None and not math.isfinite(duration):
            duration = None
        if duration is not None and duration > max_seconds:
            raise Refused(f"the video is {duration:.1f} s long; this server takes at most {max_seconds:g} s")
        has_audio = bool(container.streams.audio)
    finally:
        container.close()
    try:
        first = decode_media(path, cfg.replace(num_chunks=1, clip_window="start"), 0.0)
    except MediaError as error:
        raise Refused(f"the video does not decode: {error.reason or error}") from None
    width, height = width or first.width, height or first.height
    if not width or not height:
        raise Refused("the video stream has no frame size (truncated or broken file)")
    if width > max_side or height > max_side:
        raise Refused(f"frames of {width}x{height} are larger than this server's limit of "
                      f"{max_side}x{max_side} pixels")
    return {"container": kind, "width": int(width), "height": int(height), "duration": duration,
            "has_audio": has_audio}


def _ffmpeg_reason(error: BaseException) -> str:
    """FFmpeg's reason without the file name (the server's own temporary path)."""
    return getattr(error, "strerror", None) or type(error).__name__


class _Relayed:
    """A live stream's bytes as the server relays them over a pipe: `read(n)` until the server
    closes its end (b"" then: the stream's end)."""

    def __init__(self, conn):
        self.conn, self.buffer = conn, b""

    def read(self, n: int) -> bytes:
        while not self.buffer:
            try:
                self.buffer = self.conn.recv_bytes()
            except (EOFError, OSError):
                return b""
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out


def _stream_check(max_side: int):
    """Refuses a live stream in a container the decoder does not promise, or with frames too large."""

    def check(container) -> None:
        if not set(container.format.name.split(",")) & ALLOWED_FORMATS:
            raise Refused(f"unsupported container {container.format.name!r}")
        for stream in container.streams.video:
            context = stream.codec_context
            if context is not None and (context.width > max_side or context.height > max_side):
                raise Refused(f"frames of {context.width}x{context.height} are larger than this server's limit of "
                              f"{max_side}x{max_side} pixels")

    return check


def _live_decode(media, request: dict) -> Iterator[MediaChunk]:
    chunks = live_chunks_from(_Relayed(media), request["name"], request["cfg"], format=request["format"],
                              check=_stream_check(request["max_side"]), silent_ok=request["silent"])
    for live in chunks:
        yield live.chunk


# --- the worker ------------------------------------------------------------------------------------------
def _confine(jail: str) -> list[str]:
    """Limit this (single-threaded, just forked) process to reading `jail`; returns what held."""
    libc = ctypes.CDLL(None, use_errno=True)
    held = []
    try:
        if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        os.chroot(jail)
        os.chdir("/")
        held += ["user+net namespace", "chroot"]
    except OSError as error:
        held.append(f"no namespaces ({error.strerror or error})")
    # capset(all zero): none of the namespace's capabilities (chroot, mount, ...) stay usable
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    if libc.capset(header, data) == 0:
        held.append("no capabilities")
    libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    return held


def _limit(memory_mb: int, cpu_s: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    libc.mallopt(_M_ARENA_MAX, 2)  # each malloc arena reserves address space; two are plenty here
    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (size + memory_mb * 2**20,) * 2)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


def _send(conn, header: dict, *arrays: np.ndarray) -> None:
    head = json.dumps(header).encode()
    conn.send_bytes(b"".join([_HEADER.pack(len(head)), head, *(a.tobytes() for a in arrays)]))


def _hook(request: dict, where: str) -> None:
    hook = request.get("hook")
    if hook == where:
        if hook.startswith("segfault"):
            ctypes.string_at(0)  # a real SIGSEGV, as a broken decoder would
        if hook.startswith("hang"):
            time.sleep(3600)
        while hook.startswith("spin"):
            pass


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _memory_note(request: dict, reason: str, certain: bool = False) -> str:
    """`reason`, said to be the memory limit's doing when an allocation failed or the worker's
    address space came near its limit (a failed allocation then surfaces as any error)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    status = os.pread(request["status_fd"], 1 << 16, 0).decode(errors="replace").splitlines()
    peak = next((int(line.split()[1]) * 1024 for line in status if line.startswith("VmPeak:")), 0)
    if certain or "Cannot allocate memory" in reason or "Errno 12" in reason or peak > soft - 64 * 2**20:
        return (f"out of memory: decoding needs more than this server's limit of {request['memory_mb']} MiB "
                f"per upload ({reason})")
    return reason


def _worker(conn, request: dict, media=None) -> None:
    """The worker's whole life: limit itself, check or decode the file, send the results, exit."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # a hostile file's FFmpeg messages do not reach the server's log
        os.dup2(devnull, fd)
    _limit(request["memory_mb"], request["cpu_s"])
    request["status_fd"] = os.open("/proc/self/status", os.O_RDONLY)  # readable after the chroot too
    torch.set_num_threads(1)
    held = _confine(request["jail"]) if request["confine"] else ["not confined"]
    path = f"/{JAIL_FILE}" if "chroot" in held else os.path.join(request["jail"], JAIL_FILE)
    cfg: MirasolConfig = request["cfg"]
    try:
        if request["op"] == "hello":
            _send(conn, {"kind": "hello", "held": held})
        elif request["op"] == "probe":
            _hook(request, "hang-probe")
            _hook(request, "spin-probe")
            facts = probe_file(path, cfg, request["max_side"], request["max_seconds"])
            _send(conn, {"kind": "facts", **facts, "cpu_s": _cpu_seconds()})
        else:
            chunks = (_live_decode(media, request) if request["op"] == "live"
                      else iter_chunks(path, cfg, max_chunks=request["max_chunks"]))
            for chunk in chunks:
                _hook(request, f"segfault@{chunk.index}")
                _hook(request, f"hang@{chunk.index}")
                video = (chunk.video * 255).round_().to(torch.uint8).numpy()
                audio = chunk.audio.to(torch.float32).numpy()
                _send(conn, {"kind": "chunk", "index": chunk.index, "start": chunk.start,
                             "valid": chunk.valid_seconds, "has_audio": chunk.has_audio,
                             "duration": chunk.duration}, video, audio)
            _send(conn, {"kind": "end", "cpu_s": _cpu_seconds()})
    except Refused as error:
        _send(conn, {"kind": "error", "reason": _memory_note(request, str(error)), "status": error.status})
    except MediaError as error:
        _send(conn, {"kind": "error", "reason": _memory_note(request, error.reason or str(error))})
    except MemoryError:
        _send(conn, {"kind": "error", "reason": _memory_note(request, "MemoryError", True)})
    except Exception as error:  # anything else a file provokes ends that file, not the server
        reason = f"the decoder failed on this file ({type(error).__name__})"
        _send(conn, {"kind": "error", "reason": _memory_note(request, reason)})
    finally:
        conn.close()


# --- the server's side -------------------------------------------------------------------------------------
_context_lock = threading.Lock()


def _context():
    """The fork server (one per server process), with the decoding modules loaded once."""
    with _context_lock:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["mirasol.serve.sandbox"])
        return ctx


def _signal_reason(code: int | None, limits: SandboxLimits) -> str:
    if code is None:
        return "the decoder did not exit"
    if code >= 0:
        return f"the decoder exited with status {code} without an answer"
    sig = -code
    name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
    if sig == signal.SIGXCPU:
        return f"the decoder used more than this server's limit of {limits.cpu_s} s of CPU time"
    if sig == signal.SIGKILL:
        return "the decoder was killed (SIGKILL; out of memory?)"
    return f"the decoder crashed ({name})"


class Sandbox:
    """Runs probes and decodes in limited workers. `jails`: a folder on the uploads' file system
    where each worker's one-file folder is made (and removed after). `enabled=False` runs the same
    code in-process (the benchmark's comparison)."""

    def __init__(self, jails: Path, limits: SandboxLimits | None = None, enabled: bool = True):
        self.jails, self.limits, self.enabled = Path(jails), limits or SandboxLimits(), enabled
        self.probe_slots = threading.BoundedSemaphore(self.limits.probes)
        self.isolation = "in-process (no sandbox)"
        self.workers: dict[int, multiprocessing.process.BaseProcess] = {}  # pid -> running worker (tests)
        self.worker_cpu_s = 0.0  # CPU seconds the workers that finished used (the benchmark)
        self._confine = True
        if enabled:
            hello = self._run({"op": "hello"}, None)
            try:
                header, _ = next(hello)
            finally:
                hello.close()
            held = header.get("held", [])
            self._confine = "chroot" in held
            self.isolation = "worker process with limits; " + ", ".join(held)
            if not self._confine:
                log.warning("mirasol serve: the decoder's sandbox has its limits but no namespaces here (%s): "
                            "it can read what the server's user can; its network is FFmpeg's file protocol only",
                            ", ".join(held))

    def probe(self, path: Path, cfg: MirasolConfig, max_side: int, max_seconds: float) -> dict:
        if not self.enabled:
            return probe_file(path, cfg, max_side, max_seconds)
        if not self.probe_slots.acquire(timeout=self.limits.wall_s):
            raise Refused("the server is checking other uploads; try again shortly", status=503)
        try:
            replies = self._run({"op": "probe", "max_side": max_side, "max_seconds": max_seconds}, path, cfg)
            try:
                header, _ = next(replies)
            finally:
                replies.close()
        finally:
            self.probe_slots.release()
        if header["kind"] != "facts":
            raise SandboxError("unexpected reply from the decoder")
        return {k: header.get(k) for k in ("container", "width", "height", "duration", "has_audio")}

    def chunks(self, path: Path, cfg: MirasolConfig, max_chunks: int) -> Iterator[MediaChunk]:
        """The file's chunks, decoded in a worker (as `iter_chunks` yields them)."""
        if not self.enabled:
            yield from iter_chunks(path, cfg, max_chunks=max_chunks)
            return
        yield from self._chunks({"op": "decode", "max_chunks": max_chunks}, path, cfg)

    def live_chunks(self, media, cfg: MirasolConfig, name: str, format: str | None, max_side: int,
                    silent: bool = False, on_start=None) -> Iterator[LiveChunk]:
        """A live stream's chunks, decoded in a worker from the bytes the server sends into `media`
        (the read end of a `multiprocessing` pipe, handed to the worker; the caller closes its
        write end at the stream's end). Ends with the worker's reason (SandboxError, Refused).
        `on_start(pid)` is called with the worker's pid."""
        if not self.enabled:
            chunks = live_chunks_from(_Relayed(media), name, cfg, format=format, check=_stream_check(max_side),
                                      silent_ok=silent)
        else:
            request = {"op": "live", "name": name, "format": format, "max_side": max_side, "silent": silent,
                       "cpu_s": self.limits.stream_cpu_s}
            chunks = (LiveChunk(chunk, time.time()) for chunk in self._chunks(request, None, cfg, media, on_start))
        try:
            yield from chunks
        finally:
            chunks.close()

    def _chunks(self, request: dict, path: Path | None, cfg: MirasolConfig, media=None,
                on_start=None) -> Iterator[MediaChunk]:
        """The chunks a worker sends for `request`, checked and in order."""
        video_shape = (cfg.frames_per_chunk, 3, cfg.image_size, cfg.image_size)
        audio_shape = (cfg.n_mels, cfg.audio_frames_per_chunk)
        replies = self._run(request, path, cfg, sizes=(math.prod(video_shape), 4 * math.prod(audio_shape)),
                            media=media, on_start=on_start)
        try:
            expected = 0
            for header, payload in replies:
                if header["kind"] == "end":
                    return
                if header["kind"] != "chunk" or header.get("index") != expected:
                    raise SandboxError("unexpected reply from the decoder")
                cut = math.prod(video_shape)
                video = torch.frombuffer(bytearray(payload[:cut]), dtype=torch.uint8).view(video_shape)
                audio = torch.frombuffer(bytearray(payload[cut:]), dtype=torch.float32).view(audio_shape)
                duration = header.get("duration")
                yield MediaChunk(index=expected, start=float(header["start"]), video=video.float().div_(255.0),
                                 audio=audio, valid_seconds=float(header["valid"]),
                                 has_audio=bool(header["has_audio"]),
                                 duration=None if duration is None else float(duration))
                expected += 1
        finally:
            replies.close()

    def _run(self, request: dict, path: Path | None, cfg: MirasolConfig | None = None,
             sizes: tuple[int, int] = (0, 0), media=None, on_start=None) -> Iterator[tuple[dict, bytes]]:
        """Start a worker on `path` (or on the pipe `media`) and yield its replies (header, raw
        bytes) until it errs or ends; always leaves no worker and no jail behind."""
        limits = self.limits
        jail = self.jails / f"{secrets.token_hex(12)}.jail"
        jail.mkdir(mode=0o700, parents=True)
        proc = receive = None
        try:
            if path is not None:
                try:
                    os.link(path, jail / JAIL_FILE)
                except OSError:  # another file system (an example folder): a copy
                    shutil.copyfile(path, jail / JAIL_FILE)
            hook = os.environ.get(HOOK_ENV) if os.environ.get(TESTING_ENV) == "1" else None
            request = {"cpu_s": limits.cpu_s, **request, "jail": str(jail), "cfg": cfg,
                       "memory_mb": limits.memory_mb, "confine": self._confine, "hook": hook}
            ctx = _context()
            receive, send = ctx.Pipe(duplex=False)
            worker = ctx.Process(target=_worker, args=(send, request, media), name="mirasol-decoder", daemon=True)
            worker.start()
            proc = worker
            send.close()
            if media is not None:
                media.close()  # the worker's end now
            self.workers[proc.pid] = proc
            if on_start is not None:
                on_start(proc.pid)
            most = 64 * 1024 + sum(sizes)
            while True:
                if not receive.poll(limits.wall_s):
                    proc.kill()
                    raise SandboxError(f"the decoder took longer than this server's limit of {limits.wall_s:g} s "
                                       f"(stopped)")
                try:
                    message = receive.recv_bytes(most)
                except (EOFError, OSError):
                    proc.join(5)
                    raise SandboxError(_signal_reason(proc.exitcode, limits)) from None
                header, payload = _parse(message, sizes)
                if header["kind"] == "error":
                    reason = str(header.get("reason", "the decoder failed"))[:1000]
                    if header.get("status") is not None:  # the probe's refusal, with its reason
                        raise Refused(reason, status=header["status"] if header["status"] in (413, 422) else 422)
                    raise SandboxError(reason)
                if isinstance(header.get("cpu_s"), float) and math.isfinite(header["cpu_s"]):
                    self.worker_cpu_s += header["cpu_s"]
                yield header, payload
                if header["kind"] in ("end", "facts", "hello"):
                    return
        finally:
            if receive is not None:
                receive.close()
            if proc is not None:
                if proc.is_alive():
                    proc.kill()
                proc.join(5)
                self.workers.pop(proc.pid, None)
            shutil.rmtree(jail, ignore_errors=True)


def _parse(message: bytes, sizes: tuple[int, int]) -> tuple[dict, bytes]:
    """A worker's reply: a JSON header, then for a chunk exactly the bytes of its two arrays."""
    try:
        (n,) = _HEADER.unpack_from(message)
        header = json.loads(message[_HEADER.size:_HEADER.size + n])
        payload = message[_HEADER.size + n:]
    except (struct.error, ValueError, UnicodeDecodeError):
        raise SandboxError("unreadable reply from the decoder") from None
    if not isinstance(header, dict) or header.get("kind") not in ("hello", "facts", "chunk", "end", "error"):
        raise SandboxError("unreadable reply from the decoder")
    if header["kind"] == "chunk":
        numbers = [header.get("start"), header.get("valid"), header.get("duration") or 0.0]
        if len(payload) != sum(sizes) or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in numbers):
            raise SandboxError("unreadable reply from the decoder")
        audio = np.frombuffer(payload, dtype=np.float32, offset=sizes[0])
        if not np.isfinite(audio).all():
            raise SandboxError("the decoder's audio features are not finite")
    elif payload:
        raise SandboxError("unreadable reply from the decoder")
    elif header["kind"] == "facts":
        duration = header.get("duration")
        if not (isinstance(header.get("width"), int) and isinstance(header.get("height"), int)
                and isinstance(header.get("container"), str) and isinstance(header.get("has_audio"), bool)
                and (duration is None or isinstance(duration, (int, float)) and math.isfinite(duration))):
            raise SandboxError("unreadable reply from the decoder")
    return header, payload
