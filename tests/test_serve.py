"""`mirasol serve`: every route of the API and every bad input, through FastAPI's TestClient, plus
the latent cache and the evidence measure on their own. The live-server tests (browser, load,
kill -9) are in test_serve_live.py."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")

from fastapi.testclient import TestClient  # noqa: E402

from mirasol.serve.app import create_app, is_loopback  # noqa: E402
from mirasol.serve.evidence import chunk_evidence, prompt_ids, segments  # noqa: E402
from mirasol.serve.latent_cache import LatentCache, entry_key  # noqa: E402
from mirasol.serve.service import Limits, Service  # noqa: E402
from serve_testing import PYTHON, run, wait_ready  # noqa: E402,F401 (run: a fixture)


@pytest.fixture(scope="module")
def service(run, media, tmp_path_factory):
    """The service of one media source, with that source's folder of videos as its examples."""
    return Service(run, tmp_path_factory.mktemp("serve_cache"), examples=media.folder)


@pytest.fixture(scope="module")
def client(service):
    return TestClient(create_app(service))


def upload(client, video, data: bytes | None = None, **kw):
    """POST /videos with the file `video` (a path), or with `data` under the name `video`."""
    name = getattr(video, "name", video)
    data = video.read_bytes() if data is None else data
    return client.post("/videos", files={"file": (name, data, "application/octet-stream")}, **kw)


def encoded(client, path) -> dict:
    r = upload(client, path)
    assert r.status_code in (200, 202), r.text
    status = wait_ready(client, r.json()["id"])
    assert status["state"] == "ready", status
    return status


# --- routes ---------------------------------------------------------------------------------------
def test_info_lists_the_families_to_choose_among(client):
    trained = client.get("/info").json()["trained_on"]
    assert trained["families_with_answers"] == ["color"] and trained["max_answer_tokens"] == 3


def test_health_info_page_and_docs(client, media):
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/info").json()
    assert info["combiner"] == "transformer" and info["chunk_seconds"] == 1.0
    assert info["trained_on"]["families"] == ["color", "shape"] and info["limits"]["max_seconds"] == 600
    assert info["examples"] == sorted(f.name for f in media.files())  # the examples folder's videos
    page = client.get("/")
    assert page.status_code == 200 and 'id="timeline"' in page.text and 'id="ask"' in page.text
    assert client.get("/docs").status_code == 200
    paths = set(client.get("/openapi.json").json()["paths"])
    assert {"/health", "/info", "/videos", "/videos/{video_id}", "/videos/{video_id}/ask",
            "/videos/{video_id}/chunks/{index}.png", "/examples/{name}", "/examples/{name}/video"} <= paths


def test_upload_once_ask_many_as_mirasol_ask_answers(client, run, media, capsys):
    """An upload is encoded once by streaming; its answers are those of `mirasol ask --whole`."""
    from mirasol.ask import ask_stream

    long, facts = media.path("long"), media.facts("long")
    n = facts.tiny_chunks()  # 11
    first = upload(client, long)
    assert first.status_code == 202 and first.json()["state"] in ("queued", "encoding")
    vid = first.json()["id"]
    status = wait_ready(client, vid)
    assert status["state"] == "ready" and status["chunks_done"] == status["chunks_total"] == n
    assert [c["start"] for c in status["chunks"]] == [float(t) for t in range(n)]
    again = upload(client, long)  # the same bytes: the cache answers, same id
    assert again.status_code == 200 and again.json() == {**first.json(), "state": "ready", "cached": True}

    [(_, expected)] = ask_stream(str(run), str(long), "what is cooked?", whole=True)
    for _ in range(3):  # any number of questions about one encoding
        r = client.post(f"/videos/{vid}/ask", json={"question": "what is cooked?"})
        assert r.status_code == 200 and r.json()["answer"] == expected
    body = r.json()
    assert set(body) >= {"answer", "seconds", "without_audio", "without_video", "evidence"}
    segs = body["evidence"]["segments"]
    assert [(s["first_chunk"], s["end_chunk"]) for s in segs] == [(t, t + 1) for t in range(n)]
    assert segs[-1]["end"] == pytest.approx(facts.seconds, abs=0.05) and all(isinstance(s["drop"], float) for s in segs)

    r = client.post(f"/videos/{vid}/ask", json={"question": "what is cooked?", "choices": ["a pancake", "an egg"],
                                                "evidence": False, "modalities": False})
    assert r.status_code == 200 and r.json()["answer"] in ("a pancake", "an egg")
    assert "evidence" not in r.json() and "without_audio" not in r.json()
    caption = client.post(f"/videos/{vid}/ask", json={})  # no question: a caption
    assert caption.status_code == 200 and caption.json()["question"] is None
    capsys.readouterr()


def test_cached_latents_are_the_streamed_ones_and_controls_zero_a_modality(client, service, media):
    from mirasol.media.chunk_reader import iter_chunks

    vid = encoded(client, media.path("fits"))["id"]
    tensors, meta = service.cache.get(vid)
    session = service.model.stream()
    for chunk in iter_chunks(media.path("fits"), service.cfg):
        session.push(chunk.video[None], chunk.audio[None])
    assert torch.allclose(tensors["full"], session.latents()[0], atol=1e-5)
    assert tensors["full"].shape[0] == tensors["no_audio"].shape[0] == tensors["no_video"].shape[0] == 2
    assert not torch.allclose(tensors["full"], tensors["no_audio"]) and not torch.allclose(tensors["full"], tensors["no_video"])
    assert tensors["thumbs"].dtype == torch.uint8 and tensors["thumbs"].shape == (2, 32, 32, 3)
    png = client.get(f"/videos/{vid}/chunks/1.png")
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get(f"/videos/{vid}/chunks/2.png").status_code == 404
    assert client.get(f"/videos/{vid}/chunks/-1.png").status_code == 404
    assert client.get(f"/videos/{vid}/chunks/x.png").status_code == 422


def test_examples_by_name_only(client, media):
    example = media.file("one_pixel")
    r = client.post(f"/examples/{example.name}")
    assert r.status_code in (200, 202)
    assert wait_ready(client, r.json()["id"])["chunks_total"] == example.facts.tiny_chunks() == 5
    video = client.get(f"/examples/{example.name}/video")
    assert video.status_code == 200 and video.content == example.path.read_bytes()
    for name in ("nope.mp4", "..%2F..%2Fpyproject.toml", "%2Fetc%2Fpasswd", "README.md"):
        assert client.post(f"/examples/{name}").status_code == 404
        assert client.get(f"/examples/{name}/video").status_code == 404


# --- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,data,message", [
    ("empty.mp4", b"", "empty"),
    ("notes.mp4", b"just some text, not a video\n" * 20, "not a video"),
    ("list.m3u8", b"#EXTM3U\n#EXTINF:10,\nfile:///etc/passwd\n", "not a video"),
    ("concat.mp4", b"ffconcat version 1.0\nfile '/etc/passwd'\n", "not a video"),
    ("image.mp4", b"\x89PNG\r\n\x1a\n" + bytes(200), "not a video"),
    ("junk.mp4", b"\x00\x00\x00\x20ftypisom" + bytes(range(256)) * 20, "cannot read"),
])
def test_hostile_uploads_get_422_and_the_server_keeps_serving(client, name, data, message):
    r = upload(client, name, data)
    assert r.status_code == 422 and message in r.json()["detail"], r.text
    assert "uploads" not in r.json()["detail"] and ".upload" not in r.json()["detail"]  # no server path
    assert client.get("/health").json()["status"] == "ok"


def test_truncated_files(client, media):
    data = media.path("fits").read_bytes()
    r = upload(client, "cut.mp4", data[: len(data) // 3])  # its index (moov) is at the end: unreadable
    assert r.status_code == 422 and "cannot read" in r.json()["detail"]
    data = media.path("long").read_bytes()
    r = upload(client, "cut.mkv", data[: len(data) // 7])  # the first seconds decode: answered about those
    assert r.status_code == 202
    status = wait_ready(client, r.json()["id"])
    assert status["state"] == "ready" and 1 <= status["chunks_total"] < media.facts("long").tiny_chunks()
    assert encoded(client, media.path("fits"))["state"] == "ready"


def test_missing_file_field_and_bad_ids(client):
    assert client.post("/videos").status_code == 422
    assert client.post("/videos", data={"other": "x"}).status_code == 422
    for vid in ("0" * 64, "abc", "0" * 63 + "g", "%2E%2E"):
        assert client.get(f"/videos/{vid}").status_code == 404
        assert client.post(f"/videos/{vid}/ask", json={"question": "q?"}).status_code == 404
    assert client.get("/videos/..%2F..%2Fetc%2Fpasswd").status_code == 404


def test_bad_questions(client, media):
    vid = encoded(client, media.path("fits"))["id"]
    url = f"/videos/{vid}/ask"
    assert client.post(url, json={"question": "x" * 501}).status_code == 422
    assert client.post(url, json={"question": "q?", "choices": ["only one"]}).status_code == 422
    assert client.post(url, json={"question": "q?", "choices": [f"c{i}" for i in range(33)]}).status_code == 422
    assert client.post(url, json={"question": "q?", "choices": ["a", "b" * 201]}).status_code == 422
    assert client.post(url, json={"question": "q?", "max_new_tokens": 1000}).status_code == 422
    assert client.post(url, json={"question": 5}).status_code == 422
    assert client.post(url, content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    assert client.post(url, json={"question": "q?", "choices": ["a", "b"]}).status_code == 200
    # answers chosen among a family's training answers; unknown or one-answer families are named
    r = client.post(url, json={"question": "what color is the square?", "family": "color"})
    assert r.status_code == 200 and r.json()["answer"] in ("green", "red") and r.json()["choices"] == ["green", "red"]
    assert "no training answers of family 'size'" in client.post(url, json={"question": "q?", "family": "size"}).text
    assert client.post(url, json={"question": "q?", "family": "shape"}).status_code == 422
    assert client.post(url, json={"question": "q?", "family": "color", "choices": ["a", "b"]}).status_code == 422
    assert client.post(url, json={"question": "q?", "family": "x" * 101}).status_code == 422
    # free answers stop at the run's longest training answer (3 tokens with EOS): at most 2 tokens of text
    free = client.post(url, json={"question": "q?", "modalities": False, "evidence": False}).json()["answer"]
    longer = client.post(url, json={"question": "q?", "modalities": False, "evidence": False,
                                    "max_new_tokens": 24}).json()["answer"]
    assert longer.replace(" ", "").startswith(free.replace(" ", ""))


def test_size_frame_and_duration_limits(run, media, tmp_path):
    big = media.path("long").read_bytes()
    limit = len(big) // 2
    limits = Limits(max_upload_bytes=limit, max_seconds=3.0, max_side=300)
    client = TestClient(create_app(Service(run, tmp_path / "cache", limits=limits)))
    r = upload(client, "big.mkv", big)  # over the limit by its Content-Length
    assert r.status_code == 413 and str(limit) not in r.json()["detail"] and "MiB" in r.json()["detail"]
    r = upload(client, "big.bin", b"\x00" * (limit + 10))  # over by a few bytes: counted while it is read
    assert r.status_code == 413
    fits = media.file("fits")  # 2 s, but wider than 300 pixels
    r = upload(client, fits.path)
    assert fits.facts.width > 300
    assert r.status_code == 422 and "larger than this server's limit of 300x300" in r.json()["detail"]
    r = upload(client, media.path("one_pixel"))  # 5 s, known from the container: refused at once
    assert r.status_code == 422 and "at most 3 s" in r.json()["detail"]
    limits = Limits(max_seconds=3.0)
    client = TestClient(create_app(Service(run, tmp_path / "cache2", limits=limits)))
    r = upload(client, media.path("no_duration"))  # 4.9 s, but no duration to refuse it by: found while encoding
    assert r.status_code == 202
    status = wait_ready(client, r.json()["id"])
    assert status["state"] == "failed" and "longer than this server's limit of 3 s" in status["error"]
    ask = client.post(f"/videos/{r.json()['id']}/ask", json={"question": "q?"})
    assert ask.status_code == 422 and "could not be encoded" in ask.json()["detail"]
    assert client.get("/health").json()["status"] == "ok"


def test_busy_gets_503_with_retry_after_and_not_ready_gets_409(run, media, tmp_path):
    service = Service(run, tmp_path / "cache", limits=Limits(max_pending=1, queue=1))
    client = TestClient(create_app(service))
    vid = encoded(client, media.path("fits"))["id"]
    service.model_lock.acquire()  # the model is busy: work waits
    try:
        waiting = threading.Thread(target=lambda: client.post(f"/videos/{vid}/ask", json={"question": "q?"}))
        waiting.start()
        deadline = time.monotonic() + 10
        while service.pending._value != 0 and time.monotonic() < deadline:  # the first holds the only place
            time.sleep(0.01)
        r = client.post(f"/videos/{vid}/ask", json={"question": "q?"})
        assert r.status_code == 503 and int(r.headers["retry-after"]) > 0
        encoding = upload(client, media.path("one_pixel")).json()["id"]  # taken by the worker, which waits
        while service.queue.qsize() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert upload(client, media.path("no_duration")).status_code == 202  # waits in the queue of 1
        r = upload(client, media.path("long"))
        assert r.status_code == 503 and "retry-after" in r.headers
        r = client.post(f"/videos/{encoding}/ask", json={"question": "q?"})
        assert r.status_code == 409 and "still being encoded" in r.json()["detail"]
    finally:
        service.model_lock.release()
    waiting.join(30)
    assert wait_ready(client, encoding)["state"] == "ready"
    assert client.post(f"/videos/{encoding}/ask", json={"question": "q?"}).status_code == 200


def test_token(service, media):
    client = TestClient(create_app(service, token="s3cret"))
    assert client.get("/health").status_code == 200 and client.get("/").status_code == 200
    assert client.get("/info").status_code == 401
    assert client.get("/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert upload(client, media.path("fits")).status_code == 401
    vid = upload(client, media.path("fits"), headers={"Authorization": "Bearer s3cret"}).json()["id"]
    assert client.get(f"/videos/{vid}?token=s3cret").status_code == 200  # images on the page use ?token=
    assert client.post(f"/videos/{vid}/ask", json={"question": "q?"}).status_code == 401


def test_cli_refuses_other_addresses_without_a_token(run, capsys):
    from mirasol.cli import main

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.com")
    assert main(["serve", "--run", str(run), "--host", "0.0.0.0"]) == 2
    assert "give an access token with --token" in capsys.readouterr().err


def test_the_core_needs_no_serve_extra(tmp_path):
    code = ("import sys; sys.modules['fastapi'] = None; sys.modules['uvicorn'] = None\n"
            "import mirasol, mirasol.cli, mirasol.serve, mirasol.serve.service\n"
            "sys.exit(mirasol.cli.main(['serve', '--run', 'RUN']))")
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "needs the serve extra: pip install 'mirasol[serve]'" in out.stderr, out.stderr


# --- the cache and the evidence on their own -------------------------------------------------------
def test_latent_cache_is_lru_bounded_and_cleans_partial_writes(tmp_path):
    entry = {"full": torch.zeros(100, 256)}  # ~100 KB
    cache = LatentCache(tmp_path, max_bytes=250_000)
    keys = [entry_key("run", f"file{i}", "s") for i in range(3)]
    cache.put(keys[0], entry, {"name": "a"})
    time.sleep(0.02)
    cache.put(keys[1], entry, {"name": "b"})
    time.sleep(0.02)
    assert cache.get(keys[0])[1]["name"] == "a"  # used: now the most recent
    time.sleep(0.02)
    cache.put(keys[2], entry, {"name": "c"})
    assert keys[0] in cache and keys[1] not in cache and keys[2] in cache
    assert cache.size_bytes() <= 250_000 and len(list(tmp_path.glob("*.safetensors"))) == 2
    (tmp_path / f"{keys[1]}.abc.part").write_bytes(b"half an entry")
    (tmp_path / "not-a-key.safetensors").write_bytes(b"x")
    reopened = LatentCache(tmp_path, max_bytes=250_000)
    assert not list(tmp_path.glob("*.part")) and sorted(reopened.keys()) == sorted([keys[0], keys[2]])
    with pytest.raises(ValueError):
        cache.put("../evil", entry, {})


def test_latent_cache_keeps_recently_read_entries_in_memory(tmp_path, monkeypatch):
    """A second read of an entry opens no file; the memory bound drops the least recently used
    entries; 0 keeps none; an entry deleted from disk leaves memory too."""
    from mirasol.serve import latent_cache

    opened = []
    real_open = latent_cache.safe_open
    monkeypatch.setattr(latent_cache, "safe_open", lambda path, **kw: opened.append(path) or real_open(path, **kw))
    entry = {"full": torch.arange(25_600.0).reshape(100, 256)}  # 100 KiB
    keys = [entry_key("run", f"file{i}", "s") for i in range(3)]
    cache = LatentCache(tmp_path / "a", max_bytes=10**7, memory_bytes=250_000)  # room for two entries
    for k in keys:
        cache.put(k, entry, {"name": k[:8]})
    first, again = cache.get(keys[0]), cache.get(keys[0])
    assert len(opened) == cache.loads == 1 and cache.hits == 2
    assert torch.equal(again[0]["full"], entry["full"]) and again[1] == first[1] == {"name": keys[0][:8]}
    cache.get(keys[1])
    cache.get(keys[2])  # a third entry: keys[0], the least recently used, leaves memory
    cache.get(keys[1])
    assert cache.loads == 3
    cache.get(keys[0])
    assert len(opened) == cache.loads == 4

    off = LatentCache(tmp_path / "a", max_bytes=10**7, memory_bytes=0)
    off.get(keys[0])
    off.get(keys[0])
    assert off.loads == 2

    small = LatentCache(tmp_path / "b", max_bytes=250_000, memory_bytes=10**7)
    small.put(keys[0], entry, {})
    assert small.get(keys[0]) is not None
    time.sleep(0.02)
    small.put(keys[1], entry, {})
    time.sleep(0.02)
    small.put(keys[2], entry, {})  # the disk bound deletes keys[0]: memory forgets it as well
    assert keys[0] not in small and small.get(keys[0]) is None


def test_a_second_question_reads_no_latents_from_disk(client, service, media, run):
    from mirasol.cli import main

    vid = encoded(client, media.path("fits"))["id"]

    def ask():
        r = client.post(f"/videos/{vid}/ask", json={"question": "what is cooked?", "evidence": False})
        assert r.status_code == 200, r.text
        return {k: r.json()[k] for k in ("answer", "without_audio", "without_video")}

    first = ask()
    loads = service.cache.loads
    assert ask() == first and service.cache.loads == loads  # from memory
    service.cache._memory.clear()
    assert ask() == first and service.cache.loads == loads + 1  # from disk: the same answers
    assert main(["serve", "--run", str(run), "--memory-cache-mb", "-1"]) == 2


def test_evidence_hides_exactly_one_chunk(service):
    """Masking chunk t in the decoder's memory gives the same score as removing chunk t's latents:
    the drop is log p(answer | all) - log p(answer | all but t)."""
    model, tok = service.model, service.tokenizer
    cfg = model.cfg
    latents = torch.randn(1, 5, cfg.combiner_tokens, cfg.av_dim)
    found = chunk_evidence(model, tok, latents, "what is cooked?", "a pancake")
    ids, cand = prompt_ids(model, tok, "what is cooked?"), tok.encode_candidates(["a pancake"])
    base = model.score_candidates_from_latents(latents, ids, [cand], append_eos=False)[0, 0].item()
    assert found["base_logprob"] == pytest.approx(base, abs=1e-5)
    for t, seg in enumerate(found["segments"]):
        keep = [i for i in range(5) if i != t]
        without = model.score_candidates_from_latents(latents[:, keep], ids, [cand], append_eos=False)[0, 0].item()
        assert seg["drop"] == pytest.approx(base - without, abs=1e-4)
    one = chunk_evidence(model, tok, latents[:, :1], "what is cooked?", "")
    assert [s["drop"] for s in one["segments"]] == [None]
    runs = segments(200)
    assert len(runs) == 64 and runs[0][0] == 0 and runs[-1][1] == 200
    assert all(a[1] == b[0] for a, b in zip(runs, runs[1:]))
    assert json.loads(json.dumps(found, allow_nan=False)) == found  # JSON-ready: plain lists, dicts, numbers


# --- the Gradio page (gradio_page.py; the serve-gradio extra) -------------------------------------
@pytest.fixture(scope="module")
def gradio_client(service):
    pytest.importorskip("gradio", reason="the serve-gradio extra is not installed: pip install -e '.[serve-gradio]'")
    app = create_app(service, gradio=True)
    assert app.state.gradio == "mounted at /gradio"
    return TestClient(app)


def test_gradio_page_is_mounted_on_the_same_app(gradio_client, service):
    page = gradio_client.get("/gradio/")
    assert page.status_code == 200 and "<html" in page.text and "gradio" in page.text.lower()
    config = gradio_client.get("/gradio/config").json()  # the page's layout, served by the mounted app
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert {"mirasol-video", "mirasol-question", "mirasol-ask", "mirasol-answer", "mirasol-strip",
            "mirasol-gallery", "mirasol-no-audio", "mirasol-no-video", "mirasol-progress"} <= ids
    assert gradio_client.get("/info").json()["pages"]["/gradio"] == "mounted at /gradio"
    assert gradio_client.get("/").status_code == 200  # the plain page stays
    assert gradio_client.app.state.service is service  # one service: one model load


def test_gradio_callbacks_answer_with_controls_and_timeline(gradio_client, service, media):
    """The functions behind the page's callbacks, on plain values, as the page calls them."""
    from mirasol.serve.gradio_page import NO_FAMILY, PageActions, gallery_items, timeline_html

    long, example = media.file("long"), media.file("fits")
    n = long.facts.tiny_chunks()  # 11
    actions = PageActions(service)
    assert actions.families() == ["color"] and example.name in actions.examples()
    assert "error" in actions.use_example("../etc/passwd") and "error" in actions.ask(None, "q?")
    submitted = actions.use_upload(str(long.path))
    assert submitted["state"] in ("queued", "encoding", "ready") and long.name in submitted["message"]
    deadline = time.monotonic() + 60
    while not (progress := actions.progress(submitted["id"]))["done"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert progress["message"] == f"ready: {long.name}, {n} chunks"
    out = actions.ask(submitted["id"], "what is cooked?", "a pancake, an egg", NO_FAMILY)
    api = service.ask(submitted["id"], "what is cooked?", ["a pancake", "an egg"])
    assert out["answer"] == api["answer"] and out["answer"] in ("a pancake", "an egg")
    assert out["without_audio"] in ("a pancake", "an egg") and out["without_video"] in ("a pancake", "an egg")
    assert out["time"].startswith("answered in ")
    assert [t["index"] for t in out["timeline"]] == list(range(n))
    assert [t["drop"] for t in out["timeline"]] == pytest.approx([s["drop"] for s in api["evidence"]["segments"]])
    assert all(t["png"] == service.thumbnail(submitted["id"], t["index"]) for t in out["timeline"])
    strip = timeline_html(out["timeline"])
    assert strip.count('class="mirasol-chunk"') == n and "data:image/png;base64," in strip
    assert [im.size for im, _ in gallery_items(out["timeline"])] == [(32, 32)] * n
    assert actions.ask(submitted["id"], "what color?", None, "color")["answer"] in ("green", "red")
    assert "at least two choices" in actions.ask(submitted["id"], "q?", "only one")["error"]
    chosen = actions.use_example(example.name)
    assert chosen["video"].endswith(example.name) and example.name in chosen["message"]


def test_gradio_with_a_token_asks_for_it_as_password(service):
    pytest.importorskip("gradio", reason="the serve-gradio extra is not installed: pip install -e '.[serve-gradio]'")
    client = TestClient(create_app(service, token="s3cret", gradio=True))
    assert client.get("/gradio/config").status_code == 401
    assert client.post("/gradio/login", data={"username": "me", "password": "wrong"}).status_code == 400
    assert client.post("/gradio/login", data={"username": "me", "password": "s3cret"}).status_code == 200
    assert client.get("/gradio/config").status_code == 200
    assert client.get("/info").status_code == 401  # the API still wants the bearer token


def test_without_gradio_the_page_is_not_mounted_and_info_says_why(service):
    code = ("import sys, mirasol, mirasol.cli, mirasol.serve.app, mirasol.serve.gradio_page\n"
            "print('imported' if 'gradio' in sys.modules else 'not imported')")
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "not imported", out.stderr  # only a page that is asked for imports it
    import sys

    saved = sys.modules.get("gradio")
    sys.modules["gradio"] = None
    try:
        client = TestClient(create_app(service, gradio=True))
    finally:
        if saved is None:
            del sys.modules["gradio"]
        else:
            sys.modules["gradio"] = saved
    assert "not mounted: Gradio is not installed" in client.get("/info").json()["pages"]["/gradio"]
    assert client.get("/gradio/").status_code == 404 and client.get("/").status_code == 200
    assert TestClient(create_app(service)).get("/info").json()["pages"]["/gradio"] == "not mounted: not asked for"
