"""Helpers shared by the `mirasol serve` tests (test_serve*.py): a small run, a live server in a
subprocess (the videos are conftest's `media`). The run is an untrained tiny model with a trained tokenizer (answers are
arbitrary but deterministic), which is what the serving plumbing needs; a trained one would add
half a minute of training to the suite and check nothing more about serving."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import make_run

PYTHON = sys.executable


def make_serve_run(path: Path) -> Path:
    """The served run: questions of two families, "color" with two training answers."""
    texts = ["what is cooked?", "a pancake", "an egg", "what shape is the object?", "a red circle",
             "describe the video", "what color is the square?", "red", "green"]
    stats = {"labels": [], "answer_prior": {"color": "red", "shape": "circle"}, "num_samples": 9,
             "answers_by_family": {"color": ["green", "red"], "shape": ["circle"]}, "max_answer_tokens": 3}
    return make_run(path, texts, stats)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_serve_run(tmp_path_factory.mktemp("serve_run"))


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A free port on 127.0.0.1 (TCP, or UDP with kind=socket.SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(argv: list[str], port: int, log: Path, timeout: float = 60.0) -> subprocess.Popen:
    """Start `python <argv>` (a server on 127.0.0.1:port) and wait until /health answers."""
    import httpx

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([PYTHON, *argv], stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"the server did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_ready(client, video_id: str, timeout: float = 60.0, prefix: str = "") -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = client.get(f"{prefix}/videos/{video_id}").json()
        if s["state"] in ("ready", "failed"):
            return s
        time.sleep(0.05)
    raise AssertionError(f"{video_id} not encoded within {timeout} s")


def make_varied_run(path: Path, scale: float = 0.3) -> Path:
    """make_serve_run with the text decoder's weights shaken (a fixed seed), so that free answers differ
    between questions and videos instead of all being the same untrained token."""
    import torch

    from mirasol.run_dir import load_run

    make_serve_run(path)
    model = load_run(path)[0]
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.text_decoder.parameters():
            if p.dim() >= 2:
                p.add_(torch.randn(p.shape, generator=generator) * scale)
    model.save_pretrained(path)
    return path


def synthetic_video(path: Path, seconds: float) -> Path:
    """A small H.264 + AAC video (moving shapes, a tone) made on the spot: no sample folder needed."""
    from mirasol.perf.media import write_test_video

    return write_test_video(path, seconds, (64, 48), fps=10)


class TsSender:
    """An MPEG-TS file's bytes sent from 127.0.0.1 as a live source, at `speed` times the clip's
    own pace (`seconds` long): over UDP in datagrams of 7 TS packets (as FFmpeg sends) to `port`,
    or over TCP to the one client that connects to `url`. After the first `fraction` of the bytes
    it closes (`then="close"`), goes silent while the connection stays open ("stall") or starts
    again from the first byte ("loop", until `stop()`)."""

    DATAGRAM = 7 * 188

    def __init__(self, data: bytes, seconds: float, kind: str = "tcp", port: int | None = None,
                 speed: float = 1.0, fraction: float = 1.0, then: str = "close"):
        self.data, self.seconds, self.kind, self.speed = data, seconds, kind, speed
        self.fraction, self.then = fraction, then
        self.stopped = threading.Event()
        self.rounds = 0
        if kind == "tcp":
            self.server = socket.socket()
            self.server.bind(("127.0.0.1", 0))
            self.server.listen(1)
            port = self.server.getsockname()[1]
        self.url = f"{kind}://127.0.0.1:{port}"
        self.port = port
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def _serve(self) -> None:
        if self.kind == "tcp":
            self.server.settimeout(60)
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            send = conn.sendall
        else:
            conn = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

            def send(block: bytes) -> None:
                for i in range(0, len(block), self.DATAGRAM):
                    conn.sendto(block[i:i + self.DATAGRAM], ("127.0.0.1", self.port))
        try:
            while not self.stopped.is_set():
                self._once(send)
                self.rounds += 1
                if self.then != "loop":
                    break
            if self.then == "stall":
                self.stopped.wait(60)
        except OSError:
            pass  # the reader went away
        finally:
            conn.close()
            if self.kind == "tcp":
                self.server.close()

    def _once(self, send) -> None:
        size = int(len(self.data) * self.fraction)
        pieces = max(1, int(self.seconds * self.fraction * 10))  # a tenth of a second each
        start = time.monotonic()
        for i in range(pieces):
            if self.stopped.is_set():
                return
            send(self.data[i * size // pieces:(i + 1) * size // pieces])
            delay = start + (i + 1) * self.seconds * self.fraction / pieces / self.speed - time.monotonic()
            if delay > 0:
                time.sleep(delay)
