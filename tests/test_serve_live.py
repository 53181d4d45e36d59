"""`mirasol serve` as a person uses it: a live server on 127.0.0.1 in its own process, started by
the command line; a real browser on the page; 32 clients at once; kill -9 in the middle of an
encoding. test_serve.py checks each route and bad input through TestClient."""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
httpx = pytest.importorskip("httpx", reason="httpx is not installed: pip install -e '.[serve-test]'")

from serve_testing import (PYTHON, free_port, rss_mb, run, start_server, stop,  # noqa: E402,F401 (run: a fixture)
                           wait_ready)

LOAD_ROLES = ["fits", "long", "no_duration", "longer"]


@pytest.fixture(scope="module")
def server(run, media, tmp_path_factory):
    """`mirasol serve` on a free port of 127.0.0.1, with one media source's videos as examples."""
    work = tmp_path_factory.mktemp("serve_live")
    port = free_port()
    proc = start_server(["-m", "mirasol.cli", "serve", "--run", str(run), "--port", str(port),
                         "--cache", str(work / "cache"), "--examples", str(media.folder)], port, work / "server.log")
    yield {"url": f"http://127.0.0.1:{port}", "proc": proc, "log": work / "server.log"}
    stop(proc)


def chromium() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("Playwright's Python API is not installed (pip install -e '.[serve-test]')")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("no system Chromium: the browser test drives Debian's `chromium` package "
                    "(apt-get install chromium; scripts/test.sh installs it where it runs as root with apt-get)")
    return exe


def same_as_the_api(url: str, vid: str, answer: str, drops: list[float]) -> None:
    """What a page showed for "what is cooked?" among two choices is what the API answers."""
    api = httpx.post(f"{url}/videos/{vid}/ask", timeout=60,
                     json={"question": "what is cooked?", "choices": ["a pancake", "an egg"]}).json()
    assert api["answer"] == answer
    assert [s["drop"] for s in api["evidence"]["segments"]] == pytest.approx(drops, abs=1e-6)


def screenshot(page, shot: Path) -> None:
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_the_page_in_a_real_browser(server, media, tmp_path):
    """Headless Chromium opens the page, uploads a video, asks, reads the answer and the timeline,
    then picks an example; a screenshot is saved in the test's tmp folder."""
    exe = chromium()  # first: it skips where Playwright or Chromium is missing
    from playwright.sync_api import expect, sync_playwright

    long, example = media.file("long"), media.file("fits")
    n = long.facts.tiny_chunks()  # 11
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server["url"] + "/")
            expect(page.locator("#run")).to_contain_text("transformer combiner")
            page.set_input_files("#file", str(long.path))
            expect(page.locator("#progress")).to_contain_text("ready", timeout=60_000)
            expect(page.locator("#timeline .chunk")).to_have_count(n)
            page.fill("#question", "what is cooked?")
            page.fill("#choices", "a pancake, an egg")
            page.click("#ask")
            expect(page.locator("#elapsed")).to_contain_text("answered in", timeout=60_000)
            answer = page.inner_text("#answer")
            assert answer in ("a pancake", "an egg")
            assert page.inner_text("#no-audio") in ("a pancake", "an egg")
            assert page.inner_text("#no-video") in ("a pancake", "an egg")
            chunks = page.locator("#timeline .chunk")
            expect(chunks).to_have_count(n)
            drops = [float(chunks.nth(i).get_attribute("data-drop")) for i in range(n)]
            page.wait_for_function("Array.from(document.querySelectorAll('#timeline img'))"
                                   ".every(i => i.complete && i.naturalWidth === 32)")
            # what the page shows is what the API answers
            same_as_the_api(server["url"], page.evaluate("videoId"), answer, drops)
            screenshot(page, tmp_path / "serve_page.png")

            page.select_option("#example", example.name)  # an example, played from the server
            page.click("#use-example")
            expect(page.locator("#progress")).to_contain_text(
                f"ready: {example.name}, {example.facts.tiny_chunks()} chunks", timeout=60_000)
            page.wait_for_function("document.getElementById('player').readyState >= 1")
            assert errors == []
        finally:
            browser.close()


@pytest.mark.slow
def test_load_32_clients_4_videos(server, media, tmp_path):
    """32 clients at once, each asking 4 questions (with evidence and both controls, as the page
    asks) about 4 videos; a 503 is retried after its Retry-After. Nothing is lost, nothing
    crashes, the server's memory stays bounded. Two rounds of the same load; the figures go to
    load.json in the tmp folder."""
    url, proc = server["url"], server["proc"]
    with httpx.Client(base_url=url, timeout=120) as c:
        ids = []
        for path in map(media.path, LOAD_ROLES):
            r = c.post("/videos", files={"file": (path.name, path.read_bytes())})
            assert r.status_code in (200, 202), r.text
            ids.append(r.json()["id"])
        for vid in ids:
            assert wait_ready(c, vid)["state"] == "ready"
        c.post(f"/videos/{ids[0]}/ask", json={"question": "warm up?"})
    rounds = [load_round(url, ids, proc.pid), load_round(url, ids, proc.pid)]
    (tmp_path / "load.json").write_text(json.dumps(rounds, indent=2))
    print(json.dumps(rounds, indent=2))
    assert proc.poll() is None, "the server died"
    for report in rounds:
        assert report["outcomes"].get("ok") == report["questions"], report  # nothing lost
        assert set(report["outcomes"]) <= {"ok", "503 (retried)"}, report
    # bounded: the first round grows the server's thread pool and allocator arenas once; the second
    # round, the same load again, must not grow it much further
    assert rounds[1]["server_rss_mb_after"] - rounds[0]["server_rss_mb_after"] < 64, rounds
    assert httpx.get(url + "/health").json()["status"] == "ok"


def load_round(url: str, ids: list[str], pid: int, clients: int = 32, per_client: int = 4) -> dict:
    """`clients` threads, each with its own connection, start together and ask `per_client`
    questions each (a 503 is retried after its Retry-After); latency counts the retries."""
    rss_before = rss_mb(pid)
    latencies, kinds, lock = [], Counter(), threading.Lock()
    barrier = threading.Barrier(clients)

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            barrier.wait()
            for q in range(per_client):
                vid = ids[(k + q) % len(ids)]
                t0 = time.perf_counter()
                for _ in range(20):
                    try:
                        r = c.post(f"/videos/{vid}/ask", json={"question": f"what is cooked? ({k}, {q})"})
                    except httpx.HTTPError as error:
                        with lock:
                            kinds[type(error).__name__] += 1
                        break
                    if r.status_code == 503:
                        with lock:
                            kinds["503 (retried)"] += 1
                        time.sleep(float(r.headers.get("retry-after", 1)))
                        continue
                    ok = r.status_code == 200 and "answer" in r.json()
                    with lock:
                        kinds["ok" if ok else str(r.status_code)] += 1
                        latencies.append(time.perf_counter() - t0)
                    break

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    wall = time.perf_counter() - started
    lat = sorted(latencies) or [float("nan")]
    return {"clients": clients, "videos": len(ids), "questions": clients * per_client, "outcomes": dict(kinds),
            "p50_s": round(statistics.median(lat), 3), "p95_s": round(lat[round(0.95 * (len(lat) - 1))], 3),
            "max_s": round(lat[-1], 3), "wall_s": round(wall, 2), "questions_per_s": round(kinds["ok"] / wall, 2),
            "server_rss_mb_before": round(rss_before, 1), "server_rss_mb_after": round(rss_mb(pid), 1)}


def _cache_files(cache: Path) -> tuple[list[str], list[str]]:
    latents = cache / "latents"
    return (sorted(p.name for p in latents.glob("*.safetensors")) if latents.exists() else [],
            sorted(p.name for p in latents.glob("*.part")) if latents.exists() else [])


def test_kill_9_during_encoding_leaves_no_half_entry(run, generated_media, tmp_path):
    """Kill -9 the server while it encodes an upload, then while the cache writes an entry; start
    it again: no half-written entry, and the same upload is encoded and answered."""
    long = generated_media.file("long")
    name, data = long.name, long.path.read_bytes()  # 11 chunks
    cache = tmp_path / "cache"
    port = free_port()
    slow = ("import sys, uvicorn; from mirasol.serve.app import create_app; from mirasol.serve.service import Service; "
            "uvicorn.run(create_app(Service(sys.argv[1], sys.argv[2], chunk_delay=0.4)), host='127.0.0.1', "
            "port=int(sys.argv[3]), log_level='warning')")
    proc = start_server(["-c", slow, str(run), str(cache), str(port)], port, tmp_path / "server1.log")
    try:
        url = f"http://127.0.0.1:{port}"
        vid = httpx.post(url + "/videos", files={"file": (name, data)}, timeout=60).json()["id"]
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/videos/{vid}", timeout=10).json()["chunks_done"] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        stop(proc)
    assert _cache_files(cache) == ([], [])

    # a kill in the middle of writing an entry (a large one, so that the write takes a while)
    writer = ("import sys, torch; from mirasol.serve.latent_cache import LatentCache, entry_key\n"
              "c = LatentCache(sys.argv[1], 2**34)\n"
              "c.put(entry_key('r', 'f', 's'), {'full': torch.ones(2**27)}, {'name': 'big'})\n")
    proc = subprocess.Popen([PYTHON, "-c", writer, str(cache / "latents")])
    deadline = time.monotonic() + 60
    while not _cache_files(cache)[1] and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    files, parts = _cache_files(cache)
    assert files == [], "the entry was written whole before the kill: make it larger"
    assert len(parts) == 1  # the half-written temporary file, under a name no reader looks at

    port = free_port()
    proc = start_server(["-m", "mirasol.cli", "serve", "--run", str(run), "--port", str(port), "--cache", str(cache)],
                        port, tmp_path / "server2.log")
    try:
        assert _cache_files(cache) == ([], [])  # the temporary file was removed at start-up
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            r = c.post("/videos", files={"file": (name, data)})
            assert r.status_code == 202 and r.json()["id"] == vid  # not cached: encoded again
            assert wait_ready(c, vid)["chunks_total"] == long.facts.tiny_chunks()
            assert c.post(f"/videos/{vid}/ask", json={"question": "what is cooked?"}).status_code == 200
        assert _cache_files(cache) == ([f"{vid}.safetensors"], [])
    finally:
        stop(proc)


def test_the_gradio_page_in_a_real_browser(server, media, tmp_path):
    """Headless Chromium opens the Gradio page (/gradio, mounted on the same server), uploads a
    video, watches the encoding finish, asks, reads the answer, both controls and the timeline,
    then picks an example; nothing is loaded from anywhere but the server. Screenshot in tmp."""
    import re

    exe = chromium()  # first: it skips where Playwright or Chromium is missing
    from playwright.sync_api import expect, sync_playwright

    info = httpx.get(server["url"] + "/info").json()
    if not info["pages"]["/gradio"].startswith("mounted"):
        pytest.skip(f"the Gradio page is {info['pages']['/gradio']}")
    local = server["url"] + "/"
    long, example = media.file("long"), media.file("fits")
    n = long.facts.tiny_chunks()  # 11
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            errors, elsewhere = [], []
            page.on("pageerror", lambda e: errors.append(str(e)))

            def only_local(route):
                url = route.request.url
                if url.startswith((local, "data:", "blob:")):
                    return route.continue_()
                elsewhere.append(url)
                return route.abort()

            page.route("**/*", only_local)
            page.goto(server["url"] + "/gradio/")
            expect(page.locator("#mirasol-run")).to_contain_text("transformer combiner", timeout=30_000)
            page.set_input_files("#mirasol-video input[type=file]", str(long.path))
            expect(page.locator("#mirasol-progress textarea")).to_have_value(
                f"ready: {long.name}, {n} chunks", timeout=60_000)
            page.fill("#mirasol-question textarea", "what is cooked?")
            page.fill("#mirasol-choices textarea", "a pancake, an egg")
            page.click("#mirasol-ask")
            expect(page.locator("#mirasol-time textarea")).to_have_value(re.compile("^answered in "), timeout=60_000)
            answer = page.locator("#mirasol-answer textarea").input_value()
            assert answer in ("a pancake", "an egg")
            assert page.locator("#mirasol-no-audio textarea").input_value() in ("a pancake", "an egg")
            assert page.locator("#mirasol-no-video textarea").input_value() in ("a pancake", "an egg")
            chunks = page.locator("#mirasol-strip .mirasol-chunk")
            expect(chunks).to_have_count(n)
            drops = [float(chunks.nth(i).get_attribute("data-drop")) for i in range(n)]
            expect(page.locator("#mirasol-gallery img")).to_have_count(n)
            page.wait_for_function("Array.from(document.querySelectorAll('#mirasol-gallery img, #mirasol-strip img'))"
                                   ".every(i => i.complete && i.naturalWidth === 32)")
            # what the page shows is what the API answers
            status = httpx.get(server["url"] + "/info").json()
            assert status["pages"]["/gradio"] == "mounted at /gradio"
            vid = httpx.post(server["url"] + "/videos", timeout=60, files={
                "file": ("x.mkv", long.path.read_bytes())}).json()["id"]  # cached: same id
            same_as_the_api(server["url"], vid, answer, drops)
            screenshot(page, tmp_path / "serve_gradio_page.png")

            page.locator("#mirasol-example input").click()  # an example, played from the server
            page.get_by_role("option", name=example.name).click()
            page.click("#mirasol-use-example")
            expect(page.locator("#mirasol-progress textarea")).to_have_value(
                re.compile(rf"^ready: {re.escape(example.name)}, \d+ chunks$"), timeout=60_000)
            page.wait_for_function("document.querySelector('#mirasol-video video') !== null && "
                                   "document.querySelector('#mirasol-video video').readyState >= 1")
            assert errors == [] and elsewhere == [], (errors, elsewhere)
        finally:
            browser.close()
