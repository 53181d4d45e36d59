"""The OpenAI-compatible chat endpoint (serve/openai_api.py), driven by the official `openai`
client against a live `mirasol serve` on 127.0.0.1 with a token and a media root: its answers are
the native ask's, a second question about a video does not encode it again, streaming ends with
[DONE], and bad requests get OpenAI's error shape with the right status."""

from __future__ import annotations

import base64
import os

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")
httpx = pytest.importorskip("httpx", reason="httpx is not installed: pip install -e '.[serve-test]'")
openai = pytest.importorskip("openai", reason="the openai client is not installed: pip install -e '.[serve-test]'")

from serve_testing import free_port, make_varied_run, start_server, stop, synthetic_video  # noqa: E402

TOKEN = "chat-test-token"
QUESTION = "what is cooked?"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("serve_openai")
    run = make_varied_run(work / "run")
    media = work / "media"
    media.mkdir()
    synthetic_video(media / "clip.mp4", 2.0)
    synthetic_video(work / "outside.mp4", 2.0)
    (media / "escape.mp4").symlink_to(work / "outside.mp4")
    port = free_port()
    proc = start_server(["-m", "mirasol.cli", "serve", "--run", str(run), "--port", str(port), "--token", TOKEN,
                         "--cache", str(work / "cache"), "--media-root", str(media), "--no-gradio",
                         "--max-upload-mb", "1"], port, work / "server.log")
    url = f"http://127.0.0.1:{port}"
    yield {"url": url, "media": media, "work": work, "model": run.name,
           "client": openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0, timeout=120)}
    stop(proc)


def data_url(path) -> str:
    return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()


def user(text: str | None, url: str) -> list[dict]:
    parts = [{"type": "text", "text": text}] if text is not None else []
    return [{"role": "user", "content": parts + [{"type": "video_url", "video_url": {"url": url}}]}]


def counters(server) -> dict:
    return httpx.get(server["url"] + "/health", timeout=10).json()


def native_ask(server, video_id: str, question: str) -> dict:
    r = httpx.post(f"{server['url']}/videos/{video_id}/ask", timeout=120,
                   headers={"Authorization": f"Bearer {TOKEN}"},
                   json={"question": question, "evidence": False, "modalities": False})
    assert r.status_code == 200, r.text
    return r.json()


def test_the_openai_client_gets_the_native_answer_and_encodes_once(server):
    client, clip = server["client"], server["media"] / "clip.mp4"
    assert [m.id for m in client.models.list().data] == [server["model"]]
    reply = client.chat.completions.create(model=server["model"], messages=user(QUESTION, data_url(clip)))
    answer = reply.choices[0].message.content
    assert answer  # the shaken test run answers something
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens >= 0
    assert counters(server)["videos_encoded"] == 1
    # the same bytes uploaded natively: already cached, the same id; the native answer is the chat's
    up = httpx.post(server["url"] + "/videos", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60,
                    files={"file": ("clip.mp4", clip.read_bytes(), "video/mp4")})
    assert up.status_code == 200 and up.json()["cached"] is True, up.text
    video_id = up.json()["id"]
    assert native_ask(server, video_id, QUESTION)["answer"] == answer
    # a second question about the same video, by data URL, id and file path: no new encoding
    hits = counters(server)["cache_hits"]
    other = "what shape is the object?"
    want = native_ask(server, video_id, other)["answer"]
    assert want and want != answer  # different questions, different answers: the equalities say something
    for url in (data_url(clip), f"mirasol://{video_id}", video_id, clip.as_uri()):
        again = client.chat.completions.create(model=server["model"], messages=user(other, url))
        assert again.choices[0].message.content == want, url
    after = counters(server)
    assert after["videos_encoded"] == 1 and after["cache_hits"] > hits
    assert after["batching"]["answered"] >= 7 and after["batching"]["window_ms"] == 5
    # max_tokens cuts the answer as the native max_new_tokens does
    short = client.chat.completions.create(model=server["model"], messages=user("red", video_id), max_tokens=1)
    r = httpx.post(f"{server['url']}/videos/{video_id}/ask", timeout=120, headers={"Authorization": f"Bearer {TOKEN}"},
                   json={"question": "red", "evidence": False, "modalities": False, "max_new_tokens": 1})
    assert short.choices[0].message.content == r.json()["answer"] != ""
    assert short.usage.completion_tokens == 1 and short.choices[0].finish_reason == "length"


def test_streaming_sends_the_same_answer_as_chunks_then_done(server):
    client, clip = server["client"], server["media"] / "clip.mp4"
    whole = client.chat.completions.create(model=server["model"], messages=user(None, clip.as_uri()))
    stream = client.chat.completions.create(model=server["model"], messages=user(None, clip.as_uri()),
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    raw = httpx.post(server["url"] + "/v1/chat/completions", headers={"Authorization": f"Bearer {TOKEN}"},
                     json={"model": server["model"], "messages": user(None, clip.as_uri()), "stream": True},
                     timeout=120)
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.endswith("data: [DONE]\n\n") and raw.text.startswith("data: {")


@pytest.mark.parametrize("case", ["no video", "http url", "outside root", "traversal", "symlink out", "no file",
                                  "unknown id", "wrong model", "not a video", "too large", "image part"])
def test_bad_requests_get_openai_errors(server, case):
    media, work = server["media"], server["work"]
    url, model, status, code = None, server["model"], 400, None
    messages = None
    if case == "no video":
        messages, code = [{"role": "user", "content": [{"type": "text", "text": QUESTION}]}], "missing_video"
    elif case == "http url":
        url, code = "http://127.0.0.1:1/clip.mp4", "unsupported_url_scheme"
    elif case == "outside root":
        url, status, code = (work / "outside.mp4").as_uri(), 403, "outside_media_root"
    elif case == "traversal":
        url, status, code = f"file://{media}/../outside.mp4", 403, "outside_media_root"
    elif case == "symlink out":
        url, status, code = (media / "escape.mp4").as_uri(), 403, "outside_media_root"
    elif case == "no file":
        url, status, code = (media / "missing.mp4").as_uri(), 404, "file_not_found"
    elif case == "unknown id":
        url, status, code = "mirasol://" + "0" * 64, 404, "video_not_found"
    elif case == "wrong model":
        url, model, status, code = (media / "clip.mp4").as_uri(), "gpt-4o", 404, "model_not_found"
    elif case == "not a video":
        url, code = "data:video/mp4;base64," + base64.b64encode(b"#EXTM3U\nhttp://x/y.ts\n" * 4).decode(), \
            "invalid_video_or_question"
    elif case == "too large":
        url, status, code = "data:video/mp4;base64," + base64.b64encode(os.urandom(1200 * 1024)).decode(), 413, \
            "request_too_large"
    elif case == "image part":
        messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,"}},
                                                 {"type": "video_url", "video_url": {"url": "mirasol://x"}}]}]
        code = "unsupported_content"
    messages = messages or user(QUESTION, url)
    with pytest.raises(openai.APIStatusError) as caught:
        server["client"].chat.completions.create(model=model, messages=messages)
    assert caught.value.status_code == status and caught.value.code == code, caught.value.body
    raw = httpx.post(server["url"] + "/v1/chat/completions", headers={"Authorization": f"Bearer {TOKEN}"},
                     json={"model": model, "messages": messages}, timeout=60)
    assert raw.status_code == status
    error = raw.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code and error["message"]


def test_a_wrong_token_is_refused_in_openai_shape(server):
    wrong = openai.OpenAI(base_url=server["url"] + "/v1", api_key="not-the-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.models.list()
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    raw = httpx.post(server["url"] + "/v1/chat/completions", json={"model": server["model"], "messages": []})
    assert raw.status_code == 401 and set(raw.json()["error"]) == {"message", "type", "param", "code"}
    native = httpx.get(server["url"] + "/info")  # the native routes keep their own shape
    assert native.status_code == 401 and set(native.json()) == {"detail"}


def test_a_video_still_encoding_is_waited_for_up_to_the_bound(tmp_path):
    """Within the bound the request waits for the encoding and answers; past it, 409 video_not_ready
    with Retry-After, and the same request answers once the video is ready."""
    import time

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from mirasol.serve import openai_api
    from mirasol.serve.service import Service

    service = Service(make_varied_run(tmp_path / "run"), tmp_path / "cache", chunk_delay=0.5)
    app = FastAPI()
    openai_api.register(app, service, media_root=tmp_path, encode_wait_s=0.2)
    client = TestClient(app)
    body = {"model": "run", "messages": user(QUESTION, synthetic_video(tmp_path / "clip.mp4", 3.0).as_uri())}
    refused = client.post("/v1/chat/completions", json=body)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "video_not_ready"
    assert refused.headers["retry-after"]
    video_id = service.submit_file(tmp_path / "clip.mp4", "clip.mp4", owned=False)["id"]
    deadline = time.monotonic() + 60
    while service.status(video_id)["state"] != "ready" and time.monotonic() < deadline:
        time.sleep(0.05)
    answered = client.post("/v1/chat/completions", json=body)
    assert answered.status_code == 200
    assert answered.json()["choices"][0]["message"]["content"] == service.answer_many(video_id, [QUESTION])[0].text


def test_media_root_must_be_a_folder(tmp_path):
    import subprocess

    from serve_testing import PYTHON

    done = subprocess.run([PYTHON, "-m", "mirasol.cli", "serve", "--run", str(tmp_path), "--media-root",
                           str(tmp_path / "missing")], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "mirasol serve: error: --media-root" in done.stderr
    assert "not a folder" in done.stderr
