"""`mirasol serve` survives whatever a client sends: uploads are probed and decoded in a sandboxed
worker (serve/sandbox.py). A worker killed, crashed or hung in the middle of an encoding ends that
upload with a reason; a fuzz run of damaged files in every container the decoder promises gets no
5xx from a live server, which stays healthy, leaves no files behind and keeps its memory bounded.

The fuzz run's size: MIRASOL_FUZZ_MUTANTS (default 300), its seed MIRASOL_FUZZ_SEED (default 0)."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")

from fastapi.testclient import TestClient  # noqa: E402

from mirasol.serve.app import create_app  # noqa: E402
from mirasol.serve.sandbox import HOOK_ENV, TESTING_ENV  # noqa: E402
from mirasol.serve.service import Limits, Service  # noqa: E402
from media_fixtures import tone, write_av  # noqa: E402
from serve_testing import free_port, make_serve_run, rss_mb, start_server, stop, wait_ready  # noqa: E402

# The containers the decoder promises (format, video codec, audio codec), each with a codec pair
# it is commonly found with.
CONTAINERS = {"mp4": ("mp4", "libx264", "aac"), "mov": ("mov", "libx264", "aac"),
              "mkv": ("matroska", "libx264", "mp3"), "webm": ("webm", "libvpx", "libopus"),
              "avi": ("avi", "mpeg4", "mp3")}


def write_media(path: Path, seconds: float = 2.0, fps: int = 10, size=(64, 48), rate: int = 48000) -> Path:
    """A small video with a moving bar and a tone, in the container and codecs of its suffix. (A bar
    on black compresses well: the page test's upload limit counts on files of about 20 KB.)"""
    fmt, vcodec, acodec = CONTAINERS[path.suffix[1:]]
    frames = np.zeros((round(seconds * fps), size[1], size[0], 3), np.uint8)
    for i, image in enumerate(frames):
        image[:, : (i * 7) % size[0]] = (200, 40, 90)
    return write_av(path, fmt, vcodec, frames, fps, acodec, tone(seconds, rate), rate)


def mutate(data: bytes, rng: random.Random, foreign: list[bytes]) -> tuple[str, bytes]:
    """One seeded mutant: bit flips (half of them in the headers), a truncation, a duplicated or
    zeroed span, or another container's header spliced on."""
    kind = rng.choice(["flip", "truncate", "duplicate", "zero", "splice"])
    out = bytearray(data)
    if kind == "flip":
        for _ in range(rng.randint(1, 24)):
            i = rng.randrange(min(len(out), 4096)) if rng.random() < 0.5 else rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        out = out[: rng.randrange(1, len(out))]
    elif kind == "duplicate":
        start, n = rng.randrange(len(out)), rng.randint(1, 4096)
        at = rng.randrange(len(out))
        out[at:at] = out[start:start + n]
    elif kind == "zero":
        start, n = rng.randrange(len(out)), rng.randint(1, 4096)
        out[start:start + n] = bytes(len(out[start:start + n]))
    else:
        head = rng.choice(foreign)[: rng.randint(16, 2048)]
        out = bytearray(head) + (out[len(head):] if rng.random() < 0.5 else out)
    return kind, bytes(out)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_serve_run(tmp_path_factory.mktemp("sandbox_run"))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sandbox_media")
    return {ext: write_media(folder / f"clip.{ext}") for ext in CONTAINERS}


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    return write_media(tmp_path_factory.mktemp("sandbox_long") / "long.mp4", seconds=12.0)


def _upload(client, path: Path, data: bytes | None = None):
    return client.post("/videos", files={"file": (path.name, path.read_bytes() if data is None else data)})


def _leftovers(service: Service) -> list[str]:
    return sorted(p.name for p in service.uploads.iterdir())


def _encoding_worker(service: Service, client, vid: str) -> int:
    """The pid of the worker decoding `vid`, once the server has encoded a chunk of it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if client.get(f"/videos/{vid}").json()["chunks_done"] >= 1 and service.sandbox.workers:
            return list(service.sandbox.workers)[0]
        time.sleep(0.02)
    raise AssertionError("the encoding did not start")


def test_the_decoder_runs_confined_in_its_own_process(run, tmp_path, media):
    service = Service(run, tmp_path / "cache")
    assert service.sandbox.enabled and "worker process with limits" in service.info()["decoder"]
    client = TestClient(create_app(service))
    r = _upload(client, media["mp4"])
    assert r.status_code == 202 and r.json()["width"] == 64 and r.json()["has_audio"]
    assert wait_ready(client, r.json()["id"])["chunks_total"] == 2
    assert _leftovers(service) == []
    service.sandbox._confine = False  # where namespaces are not available: the limits alone
    r = _upload(client, media["webm"])
    assert r.status_code == 202 and wait_ready(client, r.json()["id"])["state"] == "ready"
    assert _leftovers(service) == []
    # the sandboxed chunks are the in-process ones, bit for bit
    from mirasol.media.chunk_reader import iter_chunks

    sandboxed = service.sandbox.chunks(media["mkv"], service.cfg, 10)
    for mine, theirs in zip(sandboxed, iter_chunks(media["mkv"], service.cfg)):
        assert (mine.video == theirs.video).all() and (mine.audio == theirs.audio).all() and mine.start == theirs.start


def test_sigkill_and_segfault_of_the_worker_mid_encoding_end_that_upload(run, tmp_path, media, long_video, monkeypatch):
    service = Service(run, tmp_path / "cache", chunk_delay=0.3)
    client = TestClient(create_app(service))
    vid = _upload(client, long_video).json()["id"]
    os.kill(_encoding_worker(service, client, vid), signal.SIGKILL)
    status = wait_ready(client, vid)
    assert status["state"] == "failed" and "the decoder was killed (SIGKILL" in status["error"]
    assert 1 <= status["chunks_done"] < 12
    r = client.post(f"/videos/{vid}/ask", json={"question": "q?"})
    assert r.status_code == 422 and "killed" in r.json()["detail"]

    monkeypatch.setenv(TESTING_ENV, "1")
    monkeypatch.setenv(HOOK_ENV, "segfault@3")
    service.chunk_delay = 0.0
    data = long_video.read_bytes() + b"\0"  # other bytes: not the failed upload's id
    r = _upload(client, long_video, data)
    assert r.status_code == 202
    status = wait_ready(client, r.json()["id"])
    assert status["state"] == "failed" and status["error"] == "the decoder crashed (SIGSEGV)"
    assert status["chunks_done"] == 3
    monkeypatch.delenv(HOOK_ENV)
    assert wait_ready(client, _upload(client, media["webm"]).json()["id"])["state"] == "ready"
    assert client.get("/health").json() == {**client.get("/health").json(), "status": "ok", "worker_alive": True}
    assert _leftovers(service) == [] and not service.sandbox.workers


def test_a_hung_or_spinning_worker_is_stopped_by_its_limits(run, tmp_path, media, monkeypatch):
    limits = Limits(decoder_wall_s=1.5, decoder_cpu_s=1)
    service = Service(run, tmp_path / "cache", limits=limits)
    client = TestClient(create_app(service))
    monkeypatch.setenv(TESTING_ENV, "1")
    monkeypatch.setenv(HOOK_ENV, "hang@1")
    t0 = time.monotonic()
    r = _upload(client, media["mp4"])
    assert r.status_code == 202
    status = wait_ready(client, r.json()["id"])
    assert status["state"] == "failed" and status["chunks_done"] == 1
    assert status["error"] == "the decoder took longer than this server's limit of 1.5 s (stopped)"
    assert time.monotonic() - t0 < 30
    monkeypatch.setenv(HOOK_ENV, "hang-probe")  # a hang while checking the upload: 422 at once
    r = _upload(client, media["mkv"])
    assert r.status_code == 422 and "took longer than this server's limit of 1.5 s" in r.json()["detail"]
    monkeypatch.setenv(HOOK_ENV, "spin-probe")  # burning CPU: RLIMIT_CPU ends it before the wall limit
    service.sandbox.limits.wall_s = 60.0  # on a busy machine 1 s of CPU can take longer than 1.5 s
    r = _upload(client, media["avi"])
    assert r.status_code == 422 and "more than this server's limit of 1 s of CPU time" in r.json()["detail"]
    monkeypatch.delenv(HOOK_ENV)
    assert wait_ready(client, _upload(client, media["mov"]).json()["id"])["state"] == "ready"
    assert _leftovers(service) == [] and not service.sandbox.workers


def test_a_memory_limit_ends_the_upload_with_its_reason(run, tmp_path, media):
    service = Service(run, tmp_path / "cache", limits=Limits(decoder_memory_mb=1))
    client = TestClient(create_app(service))
    r = _upload(client, media["mp4"])
    assert r.status_code == 422 and "memory" in r.json()["detail"], r.text
    assert client.get("/health").json()["status"] == "ok" and _leftovers(service) == []


@pytest.mark.slow
def test_fuzzed_uploads_get_no_5xx_and_leave_the_server_healthy(run, media, tmp_path):
    """Seeded mutants of the test media in every container, one after another, to a live server."""
    import httpx

    count = int(os.environ.get("MIRASOL_FUZZ_MUTANTS", "300"))
    rng = random.Random(int(os.environ.get("MIRASOL_FUZZ_SEED", "0")))
    originals = {ext: p.read_bytes() for ext, p in media.items()}
    foreign = list(originals.values())
    cache, port = tmp_path / "cache", free_port()
    proc = start_server(["-m", "mirasol.cli", "serve", "--run", str(run), "--port", str(port), "--cache", str(cache),
                         "--no-gradio"], port, tmp_path / "server.log")
    outcomes, kinds, reasons, rss, fds = Counter(), Counter(), Counter(), [rss_mb(proc.pid)], []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            for i in range(count):
                ext = list(originals)[i % len(originals)]
                kind, data = mutate(originals[ext], rng, foreign)
                kinds[kind] += 1
                r = client.post("/videos", files={"file": (f"m{i}.{ext}", data)})
                assert r.status_code < 500, f"mutant {i} ({ext}, {kind}): {r.status_code} {r.text}"
                if r.status_code >= 400:
                    outcomes["4xx"] += 1
                    reasons[r.json()["detail"][:70]] += 1
                else:
                    status = wait_ready(client, r.json()["id"], timeout=120)
                    outcomes[status["state"]] += 1
                    if status["state"] == "failed":
                        reasons[status["error"][:70]] += 1
                health = client.get("/health")
                assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["worker_alive"]
                assert proc.poll() is None
                if i in (min(19, count - 1), count - 1):
                    rss.append(rss_mb(proc.pid))
                    fds.append(len(os.listdir(f"/proc/{proc.pid}/fd")))
            intact = client.post("/videos", files={"file": ("clip.mp4", originals["mp4"])})
            assert wait_ready(client, intact.json()["id"])["state"] == "ready"
        assert sorted(p.name for p in (cache / "uploads").iterdir()) == []
        assert list((cache / "latents").glob("*.part")) == []
        print(f"\nfuzz: {count} mutants ({dict(kinds)}): {dict(outcomes)}; server RSS at start, after 20 "
              f"mutants, at the end: {' -> '.join(f'{x:.0f}' for x in rss)} MB")
        for reason, n in reasons.most_common(12):
            print(f"  {n:5d}  {reason}")
        assert outcomes["ready"] > 0 and outcomes["4xx"] > 0
        assert rss[-1] - rss[1] < 150, f"the server's memory grew from {rss[1]:.0f} to {rss[-1]:.0f} MB"
        assert fds[-1] <= fds[0] + 16, f"the server's open files grew from {fds[0]} to {fds[-1]}"
    finally:
        stop(proc)


def test_the_gradio_pages_uploads_are_bounded_and_go_through_the_sandbox(run, tmp_path, media):
    from mirasol.serve.gradio_page import PageActions

    service = Service(run, tmp_path / "cache", limits=Limits(max_upload_bytes=60_000))
    actions = PageActions(service)
    received = service.page_files / "abc" / "clip.mp4"  # where Gradio puts what the page receives
    received.parent.mkdir()
    received.write_bytes(media["mp4"].read_bytes()[:5000])  # its index cut off
    assert "cannot read the file as a video" in actions.use_upload(str(received))["error"]
    assert not received.exists()  # a refused file's copy is not kept for the player
    received.write_bytes(b"\0" * 70_000)
    assert "larger than this server's limit" in actions.use_upload(str(received))["error"] and not received.exists()
    for i in range(5):  # the players' copies: at most PAGE_UPLOADS (4) largest uploads' bytes, the newest kept
        copy = service.page_files / f"u{i}" / "clip.mkv"
        copy.parent.mkdir()
        copy.write_bytes(media["mkv"].read_bytes() + bytes(40_000 + i))
        done = actions.use_upload(str(copy))
        assert wait_ready(TestClient(create_app(service)), done["id"])["state"] == "ready"
        assert copy.exists() and sum(p.stat().st_size for p in service.page_files.rglob("*") if p.is_file()) <= 240_000
    assert not (service.page_files / "u0" / "clip.mkv").exists() and _leftovers(service) == []
    pytest.importorskip("gradio", reason="the serve-gradio extra is not installed: pip install -e '.[serve-gradio]'")
    client = TestClient(create_app(service, gradio=True))
    r = client.post("/gradio/gradio_api/upload", files={"files": ("clip.webm", media["webm"].read_bytes())})
    assert r.status_code == 200 and Path(r.json()[0]).resolve().is_relative_to(service.page_files.resolve())


def test_a_confined_worker_reads_its_upload_only_and_has_no_network(tmp_path):
    """What `_confine` holds, in a forked child: the jail's file is there, nothing else is, no
    connection reaches a socket listening on the loopback, and chroot cannot be undone."""
    import encodings.idna  # noqa: F401  (socket addresses go through it; nothing can be imported once confined)
    import socket

    from mirasol.serve.sandbox import JAIL_FILE, _confine

    jail = tmp_path / "jail"
    jail.mkdir()
    (jail / JAIL_FILE).write_bytes(b"the upload")
    (tmp_path / "secret").write_bytes(b"another client's file")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    pid = os.fork()
    if pid == 0:  # the child: report each check as one bit of the exit status
        code = 0
        try:
            held = _confine(str(jail))
            if "chroot" not in held:
                os._exit(100)
            code |= 1 if open(f"/{JAIL_FILE}", "rb").read() == b"the upload" else 0
            code |= 2 if not os.path.exists(str(tmp_path / "secret")) and not os.path.exists("/etc/passwd") else 0
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            except OSError:
                code |= 4
            try:
                os.chroot("/")
            except PermissionError:
                code |= 8
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    listener.close()
    if os.waitstatus_to_exitcode(status) == 100:
        pytest.skip("unprivileged user namespaces are not available here: the sandbox runs with its limits alone")
    assert os.waitstatus_to_exitcode(status) == 15
