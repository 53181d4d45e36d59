"""`mirasol serve` follows live streams (serve/streams.py): off unless `--allow-streams` names the
source; the bytes relayed by the server and decoded in a sandboxed worker; questions answered
from what has been seen, as `mirasol watch` answers them; standing answers and `when` alerts as
Server-Sent Events; a source that ends, stalls or cannot be reached ends its stream with a reason.

Sources are MPEG-TS clips sent from 127.0.0.1 by a Python thread (TsSender: TCP or UDP, no FFmpeg
needed), and by `ffmpeg -re` where Debian's ffmpeg is installed."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")

from fastapi.testclient import TestClient  # noqa: E402

from media_fixtures import remux  # noqa: E402
from mirasol.cli import main as cli  # noqa: E402
from mirasol.errors import UsageError  # noqa: E402
from mirasol.serve.app import create_app  # noqa: E402
from mirasol.serve.sandbox import HOOK_ENV, TESTING_ENV  # noqa: E402
from mirasol.serve.service import Service  # noqa: E402
from mirasol.serve.streams import AllowList  # noqa: E402
from mirasol.watch import watch  # noqa: E402
from serve_testing import TsSender, free_port, make_varied_run, synthetic_video  # noqa: E402

SECONDS = 8
QUESTION = "what shape is the object?"  # the varied run answers it differently along the clip
WINDOW = 6
ALLOW = "tcp://127.0.0.1:*,udp://127.0.0.1"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_varied_run(tmp_path_factory.mktemp("streams_run"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """(mp4, MPEG-TS bytes) of a SECONDS long clip with moving shapes and a tone."""
    folder = tmp_path_factory.mktemp("streams_clip")
    mp4 = synthetic_video(folder / "clip.mp4", SECONDS)
    remux(mp4, folder / "clip.ts", "mpegts")
    return mp4, (folder / "clip.ts").read_bytes()


@pytest.fixture(scope="module")
def service(run, tmp_path_factory):
    return Service(run, tmp_path_factory.mktemp("streams_cache"))


@pytest.fixture(scope="module")
def client(service):
    return TestClient(create_app(service, allow_streams=ALLOW))


def wait_state(client, sid: str, states=("ended", "stalled", "failed", "stopped"), timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get(f"/streams/{sid}").json()
        if state["state"] in states:
            return state
        time.sleep(0.05)
    raise AssertionError(f"stream {sid} not in {states} within {timeout} s: {state}")


def sse_events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "event" in lines:
            out.append((lines["event"], json.loads(lines["data"])))
    return out


def watched(run, data: bytes, every: float) -> list[dict]:
    """`mirasol watch`'s answers to QUESTION about the same stream, sent the same way."""
    import io

    sender = TsSender(data, SECONDS, "tcp", speed=4)
    out = io.StringIO()
    watch(str(run), sender.url, asks=[QUESTION], every=every, window=WINDOW, stall_timeout=5, as_json=True, out=out)
    return [json.loads(line) for line in out.getvalue().splitlines()]


# --- the allow-list ----------------------------------------------------------------------------------
def test_streams_are_off_by_default_and_the_allow_list_is_enforced(service, client):
    allowed = service.streams.allow
    try:
        service.streams.allow = AllowList()  # what a server started without --allow-streams has
        r = client.post("/streams", json={"url": "udp://127.0.0.1:5000"})
        assert r.status_code == 400
        assert "live streams are off" in r.json()["detail"] and "--allow-streams udp://127.0.0.1:5000" in r.json()["detail"]
        assert client.get("/info").json()["streams"]["allowed"] == []
    finally:
        service.streams.allow = allowed
    assert client.get("/info").json()["streams"]["allowed"] == ["tcp://127.0.0.1", "udp://127.0.0.1"]
    for url, status, words in [("udp://10.0.0.5:5000", 403, "--allow-streams udp://10.0.0.5:5000"),
                               ("tcp://localhost:5000", 403, "--allow-streams tcp://localhost:5000"),
                               ("http://127.0.0.1:8080/live.ts", 403, "--allow-streams http://127.0.0.1:8080"),
                               ("rtsp://127.0.0.1:554/cam", 400, "follows udp, tcp, http, https streams only"),
                               ("udp://127.0.0.1", 400, "name a host and a port")]:
        r = client.post("/streams", json={"url": url})
        assert r.status_code == status, (url, r.text)
        assert words in r.json()["detail"] and (status == 400 or url in r.json()["detail"])
    rules = AllowList(["udp://127.0.0.1:5000", "tcp://[::1]:*,https://cams.example.org"])
    assert rules.allows("udp", "127.0.0.1", 5000) and not rules.allows("udp", "127.0.0.1", 5001)
    assert rules.allows("tcp", "::1", 9) and rules.allows("https", "cams.example.org", 443)
    for bad in ["ftp://host", "udp://*:5000", "tcp://127.0.0.1/path", "127.0.0.1"]:
        with pytest.raises(UsageError, match="--allow-streams"):
            AllowList(bad)
    assert client.post("/streams", json={"url": "tcp://127.0.0.1:9", "every": 0}).status_code == 422
    assert client.post("/streams", json={"url": "tcp://127.0.0.1:9", "when": ["no answer"]}).status_code == 422
    assert client.get("/streams/s0123456789abcdef").status_code == 404


def test_the_flag_is_checked_before_the_model_loads(run, capsys):
    assert cli(["serve", "--run", str(run), "--allow-streams", "rtsp://127.0.0.1"]) == 2
    err = capsys.readouterr().err
    assert "--allow-streams rtsp://127.0.0.1: the scheme must be one of udp, tcp, http, https" in err


# --- following a stream --------------------------------------------------------------------------------
def test_a_stream_is_decoded_in_the_sandbox_and_answered_as_watch_answers(run, clip, service, client):
    """A TCP stream sent by a Python thread: standing answers every 2 s and a `when` alert come as
    Server-Sent Events with increasing video times, equal to `mirasol watch`'s answers about the
    same stream at the same points; the decoder is a sandbox worker, not the server; the source
    closing ends the stream with that reason, and questions are still answered afterwards."""
    _, data = clip
    reference = watched(run, data, every=1)
    by_second = {line["video_seconds"]: line["answer"] for line in reference}
    assert sorted(by_second)[:SECONDS - 1] == list(range(1, SECONDS))
    target = next(a for _, a in sorted(by_second.items()) if a.strip())  # the alert lands where it first appears
    first = min(t for t, a in by_second.items() if a == target)

    sender = TsSender(data, SECONDS, "tcp", speed=2)
    r = client.post("/streams", json={"url": sender.url, "ask": [QUESTION], "every": 2,
                                      "when": [f"{QUESTION}={target}"], "window": WINDOW})
    assert r.status_code == 202, r.text
    sid = r.json()["id"]
    assert r.json()["state"] == "connecting" and r.json()["standing"]["when"] == [f"{QUESTION}={target}"]
    deadline = time.monotonic() + 60
    while service.streams.get(sid).decoder_pid is None and time.monotonic() < deadline:
        time.sleep(0.01)
    pid = service.streams.get(sid).decoder_pid
    assert pid is not None and pid != os.getpid()
    assert "worker process with limits" in client.get("/info").json()["decoder"]
    while service.streams.get(sid).chunks < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pid in service.sandbox.workers  # the decoding runs in that worker while the stream plays
    state = wait_state(client, sid)
    assert state["state"] == "ended" and "the source closed the connection" in state["reason"]
    assert state["chunks"] == len(state["timeline"]) >= SECONDS - 1 and state["dropped"] == 0
    assert pid not in service.sandbox.workers

    events = sse_events(client.get(f"/streams/{sid}/events").text)
    answers = [data for name, data in events if name == "answer"]
    asked = [a for a in answers if a["kind"] == "ask"]
    assert [a["video_seconds"] for a in asked] == [t for t in (2, 4, 6, 8) if t <= state["video_seconds"]]
    assert [a["answer"] for a in asked] == [by_second[a["video_seconds"]] for a in asked]
    [alert] = [a for a in answers if a["kind"] == "when"]
    assert alert["answer"] == target and alert["chunk"] == first - 1 and alert["chunk_end"] == first
    assert [n for n, _ in events if n == "chunk"] and events[-1][0] == "end" and events[-1][1]["state"] == "ended"

    # asked after its end, the stream answers from all it saw, as watch did at its end
    r = client.post(f"/videos/{sid}/ask", json={"question": QUESTION})
    assert r.status_code == 200 and r.json()["answer"] == reference[-1]["answer"]
    assert r.json()["video_seconds"] == state["video_seconds"]
    r = client.post("/v1/chat/completions", json={"model": run.name, "messages": [{"role": "user", "content": [
        {"type": "text", "text": QUESTION}, {"type": "video_url", "video_url": {"url": f"mirasol://{sid}"}}]}]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == reference[-1]["answer"]
    frame = client.get(f"/streams/{sid}/frame.png")
    assert frame.status_code == 200 and frame.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(s["id"] == sid for s in client.get("/streams").json()["streams"])


def test_a_udp_stream_pushes_events_while_it_plays_and_delete_stops_it(clip, service, client):
    _, data = clip
    port = free_port(socket.SOCK_DGRAM)
    r = client.post("/streams", json={"url": f"udp://127.0.0.1:{port}", "ask": [QUESTION]})
    sid = r.json()["id"]
    sender = TsSender(data, SECONDS, "udp", port=port, speed=1, then="loop")
    try:
        deadline = time.monotonic() + 60
        while service.streams.get(sid).chunks < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        state = client.get(f"/streams/{sid}").json()
        assert state["state"] == "live" and state["chunks"] >= 3 and state["lag_seconds"] >= 0
        asked = client.post(f"/videos/{sid}/ask", json={"question": QUESTION, "window": 2}).json()
        assert asked["window_chunks"] == 2 and asked["state"] == "live"
        pid = service.streams.get(sid).decoder_pid
        stopped = client.delete(f"/streams/{sid}").json()
        assert stopped["state"] == "stopped" and "DELETE" in stopped["reason"]
        wait_state(client, sid, timeout=30)
        deadline = time.monotonic() + 30
        while pid in service.sandbox.workers and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pid not in service.sandbox.workers  # the decoder ended with the stream
    finally:
        sender.stop()
    events = sse_events(client.get(f"/streams/{sid}/events").text)
    times = [d["video_seconds"] for n, d in events if n == "answer"]
    assert len(times) >= 3 and times == sorted(times) and len(set(times)) == len(times)
    assert events[-1][0] == "end" and events[-1][1]["state"] == "stopped"


@pytest.mark.parametrize("then, state, words", [("close", "ended", "the source closed the connection"),
                                                ("stall", "stalled", "nothing arrived for 1 s"),
                                                ("unreachable", "failed", "cannot connect to 127.0.0.1")])
def test_a_source_that_dies_stalls_or_is_unreachable_ends_with_its_reason(clip, client, then, state, words):
    _, data = clip
    if then == "unreachable":
        url, sender = f"tcp://127.0.0.1:{free_port()}", None
    else:
        sender = TsSender(data, SECONDS, "tcp", speed=2, fraction=0.6, then=then)
        url = sender.url
    try:
        sid = client.post("/streams", json={"url": url, "ask": [QUESTION], "stall_timeout": 1}).json()["id"]
        ended = wait_state(client, sid)
    finally:
        if sender is not None:
            sender.stop()
    assert ended["state"] == state and words in ended["reason"], ended
    if then != "unreachable":  # the answers before the end are kept, and questions still answered
        assert ended["answers"] >= 3 and len(ended["recent_answers"]) == ended["answers"]
        assert ended["video_seconds"] < SECONDS and f"after {ended['video_seconds']:g} s of video" in ended["reason"]
        assert client.post(f"/videos/{sid}/ask", json={"question": QUESTION}).status_code == 200
    else:
        assert ended["chunks"] == 0
        r = client.post(f"/videos/{sid}/ask", json={"question": QUESTION})
        assert r.status_code == 409 and "no chunk" in r.json()["detail"]


def test_a_decoder_that_crashes_mid_stream_fails_that_stream_only(clip, client, monkeypatch):
    _, data = clip
    monkeypatch.setenv(TESTING_ENV, "1")
    monkeypatch.setenv(HOOK_ENV, "segfault@2")
    sender = TsSender(data, SECONDS, "tcp", speed=2)
    try:
        sid = client.post("/streams", json={"url": sender.url, "ask": [QUESTION]}).json()["id"]
        ended = wait_state(client, sid)
    finally:
        sender.stop()
    assert ended["state"] == "failed" and "the decoder crashed (SIGSEGV)" in ended["reason"] and ended["chunks"] == 2
    assert client.get("/health").json()["status"] == "ok"


def test_ffmpeg_udp_stream(clip, client):
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg); TsSender covers UDP without it")
    mp4, _ = clip
    port = free_port(socket.SOCK_DGRAM)
    sid = client.post("/streams", json={"url": f"udp://127.0.0.1:{port}", "ask": [QUESTION], "every": 2,
                                        "stall_timeout": 2}).json()["id"]
    time.sleep(0.5)
    sender = subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-i", str(mp4), "-c", "copy",
                             "-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316"], stdin=subprocess.DEVNULL,
                            timeout=60)
    assert sender.returncode == 0
    ended = wait_state(client, sid)
    assert ended["state"] == "stalled" and ended["chunks"] >= SECONDS - 2
    times = [d["video_seconds"] for n, d in sse_events(client.get(f"/streams/{sid}/events").text) if n == "answer"]
    assert times[:3] == [2, 4, 6]


def test_the_page_has_the_stream_section(client):
    page = client.get("/").text
    for part in ['id="stream-url"', 'id="stream-frame"', 'id="stream-timeline"', 'id="stream-answers"',
                 "EventSource", "/streams"]:
        assert part in page


@pytest.fixture(scope="module")
def live_server(run, tmp_path_factory):
    """`mirasol serve --allow-streams udp://127.0.0.1,tcp://127.0.0.1` in its own process: its URL."""
    from serve_testing import start_server, stop

    pytest.importorskip("httpx", reason="httpx is not installed: pip install -e '.[serve-test]'")
    work = tmp_path_factory.mktemp("streams_live")
    port = free_port()
    server = start_server(["-m", "mirasol.cli", "serve", "--run", str(run), "--port", str(port), "--no-gradio",
                           "--cache", str(work / "cache"), "--allow-streams", "udp://127.0.0.1",
                           "--allow-streams", "tcp://127.0.0.1"], port, work / "server.log")
    yield f"http://127.0.0.1:{port}"
    stop(server)


def test_events_arrive_while_the_stream_plays(clip, live_server):
    """On a live server, a client reading /streams/{id}/events gets each answer while the source
    is still sending, long before the stream ends, then the `end` event."""
    httpx = pytest.importorskip("httpx")

    _, data = clip
    sender = TsSender(data, SECONDS, "tcp", speed=1)
    sid = httpx.post(f"{live_server}/streams", json={"url": sender.url, "ask": [QUESTION]}).json()["id"]
    seen = []
    try:
        with httpx.stream("GET", f"{live_server}/streams/{sid}/events", timeout=60) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            name = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    seen.append((name, json.loads(line[6:]), sender.thread.is_alive()))
                    if name == "end":
                        break
    finally:
        sender.stop()
    answers = [(d, sending) for n, d, sending in seen if n == "answer"]
    assert answers and answers[0][1]  # the first answer came while the source was still sending
    assert [d["video_seconds"] for d, _ in answers] == sorted(d["video_seconds"] for d, _ in answers)
    assert seen[-1][0] == "end" and seen[-1][1]["state"] == "ended"


def test_the_stream_on_the_page_in_a_real_browser(clip, live_server, tmp_path):
    """Headless Chromium follows a UDP stream from the page of a live `mirasol serve`: the latest
    frame, the growing chunk timeline and the standing answers appear; Stop ends it."""
    from test_serve_live import chromium, screenshot

    exe = chromium()
    from playwright.sync_api import expect, sync_playwright

    _, data = clip
    udp = free_port(socket.SOCK_DGRAM)
    sender = TsSender(data, SECONDS, "udp", port=udp, then="loop")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                errors = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(f"{live_server}/")
                expect(page.locator("#stream-note")).to_contain_text("udp://127.0.0.1")
                page.fill("#stream-url", f"udp://127.0.0.1:{udp}")
                page.fill("#stream-ask", QUESTION)
                page.fill("#stream-every", "1")
                page.click("#stream-start")
                page.wait_for_function("document.querySelectorAll('#stream-timeline .tick').length >= 3",
                                       timeout=60_000)
                expect(page.locator("#stream-answers li").first).to_contain_text(QUESTION, timeout=30_000)
                page.wait_for_function("document.getElementById('stream-frame').naturalWidth > 0", timeout=30_000)
                size = page.evaluate("fetch('/info').then((r) => r.json()).then((i) => i.image_size)")
                assert page.evaluate("document.getElementById('stream-frame').naturalWidth") == size
                screenshot(page, tmp_path / "stream-page.png")
                page.click("#stream-stop")
                expect(page.locator("#stream-state")).to_contain_text("stopped", timeout=30_000)
                assert errors == []
            finally:
                browser.close()
    finally:
        sender.stop()


def test_an_http_stream_is_followed_and_a_redirect_is_not(clip, service, client):
    """An HTTP GET body is relayed (its container probed by the sandboxed decoder); a redirect ends
    the stream with where it pointed, unfollowed, so the allow-list cannot be stepped around."""
    import http.server
    import threading

    _, data = clip

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the standard library's name)
            if self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", "http://10.0.0.1/elsewhere.ts")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.end_headers()
            for i in range(20):  # at four times the clip's pace
                self.wfile.write(data[i * len(data) // 20:(i + 1) * len(data) // 20])
                time.sleep(SECONDS / 20 / 4)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port, allowed = server.server_address[1], service.streams.allow
    service.streams.allow = AllowList(f"http://127.0.0.1:{port}")
    try:
        sid = client.post("/streams", json={"url": f"http://127.0.0.1:{port}/live.ts", "ask": [QUESTION]}).json()["id"]
        followed = wait_state(client, sid)
        sid = client.post("/streams", json={"url": f"http://127.0.0.1:{port}/moved"}).json()["id"]
        moved = wait_state(client, sid)
    finally:
        service.streams.allow = allowed
        server.shutdown()
    assert followed["state"] == "ended" and followed["chunks"] >= SECONDS - 1 and followed["answers"] >= SECONDS - 1
    assert moved["state"] == "failed" and "HTTP 302" in moved["reason"] and "not followed" in moved["reason"]


def test_a_model_behind_the_stream_drops_to_the_newest_chunk(clip, service, client, monkeypatch):
    """watch's policy on the server: a slowed model gets the newest chunk, the skipped ones are counted."""
    from mirasol.model.stream import MediaStream

    _, data = clip
    push = MediaStream.push

    def slow(self, video, audio):
        time.sleep(0.5)
        return push(self, video, audio)

    monkeypatch.setattr(MediaStream, "push", slow)
    monkeypatch.setattr(service.streams, "max_behind", 0.2)
    sender = TsSender(data, SECONDS, "tcp", speed=4)
    try:
        sid = client.post("/streams", json={"url": sender.url}).json()["id"]
        ended = wait_state(client, sid)
    finally:
        sender.stop()
    indices = [c["index"] for c in ended["timeline"]]
    assert ended["state"] == "ended" and ended["dropped"] > 0
    assert ended["chunks"] + ended["dropped"] == indices[-1] + 1 >= SECONDS - 1
    assert indices == sorted(set(indices)) and len(indices) < indices[-1] + 1  # gaps where chunks were dropped
