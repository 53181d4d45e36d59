"""An OpenAI-compatible chat endpoint on `mirasol serve`, as vLLM and SGLang take video:

    GET  /v1/models             the run, as the one model served
    POST /v1/chat/completions   {"model", "messages", "max_tokens"?, "stream"?} -> a chat completion

The video is a `{"type": "video_url", "video_url": {"url": URL}}` content part; URL is one of

    data:video/...;base64,...   the file itself: the same upload path and size limit as POST /videos
    mirasol://VIDEO_ID          a video uploaded before (the id POST /videos returned); the bare id too;
                                or a live stream's id (POST /streams): answered from what it has seen so far
    file:///PATH                a file under the server's --media-root folder (off without one)

and nothing else (no http fetching). The question is the text of the last user message (no text:
a caption); one video per request; the model answers that one question, so earlier turns and
system messages are read for their video only. A video still encoding is waited for up to
`encode_wait_s` (default 60 s), then answered 409 with Retry-After. Answers are greedy (sampling
settings are accepted and ignored) and go through the same batched path as POST /videos/{id}/ask,
so the same question about the same video gets the same answer. With `stream: true` the answer,
computed whole, is sent as Server-Sent Events in OpenAI's chunk format, a word per chunk, ending
with `data: [DONE]`. Errors: `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from mirasol.serve.batcher import prompt_tokens
from mirasol.serve.latent_cache import KEY
from mirasol.serve.service import Busy, NotFound, NotReady, Service, UploadError
from mirasol.serve.streams import STREAM_ID, StreamRefused

PREFIX = "/v1/"
ENCODE_WAIT_S = 60.0
VIDEO_ID_SCHEME = "mirasol://"
DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)(?:;[^;,]*)*;base64,", re.IGNORECASE)
ROLES = {"system", "developer", "user", "assistant", "tool"}
MAX_TOKENS = 64  # the native ask's bound on max_new_tokens


class ChatError(Exception):
    """A request answered with OpenAI's error shape and `status`."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.retry_after = retry_after


def error_response(status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}},
                        status_code=status, headers=headers)


def is_openai_path(path: str) -> bool:
    return path.startswith(PREFIX)


def request_limit(path: str, upload_limit: int) -> int:
    """The request body limit: a data: URL carries the file in base64 (4 bytes per 3)."""
    return upload_limit * 4 // 3 + 4096 if is_openai_path(path) else upload_limit


def _from_service_error(error: Exception) -> ChatError:
    if isinstance(error, UploadError):
        if error.status == 413:
            return ChatError(413, str(error), param="messages", code="request_too_large")
        if error.status >= 500:
            return ChatError(error.status, str(error), type="server_error", param="messages", code="encoding_failed")
        return ChatError(400, str(error), param="messages", code="invalid_video_or_question")
    if isinstance(error, Busy):
        return ChatError(503, str(error), type="server_error", code="overloaded", retry_after=error.retry_after)
    if isinstance(error, NotFound):
        return ChatError(404, str(error), type="not_found_error", param="messages", code="video_not_found")
    if isinstance(error, NotReady):
        return ChatError(409, str(error), param="messages", code="video_not_ready", retry_after=1)
    if isinstance(error, StreamRefused):
        return ChatError(error.status, str(error), param="messages", code="stream_not_answerable")
    raise error


@dataclass
class Chat:
    question: str | None
    url: str
    max_tokens: int
    stream: bool
    include_usage: bool


def parse_chat(body, model_name: str, default_tokens: int) -> Chat:
    """Check a chat request's body; raises ChatError naming the field."""
    if not isinstance(body, dict):
        raise ChatError(400, "the request body must be a JSON object")
    if body.get("model") != model_name:
        raise ChatError(404, f"the model {body.get('model')!r} is not served here; this server serves "
                        f"{model_name!r} (GET /v1/models)", param="model", code="model_not_found")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ChatError(400, "messages must be a non-empty list", param="messages")
    if body.get("n") not in (None, 1):
        raise ChatError(400, "only n=1 is supported (answers are greedy)", param="n")
    urls, question = [], None
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ChatError(400, f"messages[{i}] must be an object with a role among {sorted(ROLES)}",
                            param=f"messages[{i}]")
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if parts is None:
            parts = []
        if not isinstance(parts, list):
            raise ChatError(400, f"messages[{i}].content must be a string or a list of parts",
                            param=f"messages[{i}].content")
        texts = []
        for j, part in enumerate(parts):
            where = f"messages[{i}].content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"].strip())
            elif kind == "video_url":
                video = part.get("video_url")
                url = video.get("url") if isinstance(video, dict) else None
                if not isinstance(url, str) or not url:
                    raise ChatError(400, f"{where}: a video_url part is {{\"type\": \"video_url\", "
                                    f"\"video_url\": {{\"url\": URL}}}}", param=where)
                urls.append(url)
            else:
                raise ChatError(400, f"{where}: unsupported content part {kind!r}; this model takes "
                                f"\"text\" and \"video_url\" parts", param=where, code="unsupported_content")
        if message["role"] == "user":
            question = " ".join(t for t in texts if t) or None
    if not urls:
        raise ChatError(400, "no video: add a {\"type\": \"video_url\", \"video_url\": {\"url\": ...}} part "
                        "(a data:video/...;base64 URL, mirasol://VIDEO_ID or a file:// path under the "
                        "server's media root)", param="messages", code="missing_video")
    if len(urls) > 1:
        raise ChatError(400, f"one video per request, got {len(urls)}", param="messages", code="too_many_videos")
    tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if tokens is None:
        tokens = default_tokens
    elif isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise ChatError(400, f"max_tokens must be an integer >= 1, got {tokens!r}", param="max_tokens")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise ChatError(400, "stream must be true or false", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ChatError(400, "stream_options must be an object", param="stream_options")
    return Chat(question, urls[0], min(tokens, MAX_TOKENS), stream, bool(options.get("include_usage")))


def media_file(url: str, media_root: Path | None) -> Path:
    """The file a file:// URL names, which must lie under media_root (symbolic links resolved)."""
    if media_root is None:
        raise ChatError(403, "file:// URLs are off: the server was started without --media-root",
                        type="permission_error", param="messages", code="file_urls_off")
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost") or parsed.query or parsed.fragment:
        raise ChatError(400, "a file URL is file:///PATH (no host, query or fragment)", param="messages",
                        code="invalid_url")
    path = Path(unquote(parsed.path))
    try:
        if not path.is_absolute():
            raise ValueError
        resolved = path.resolve(strict=False)
    except (OSError, ValueError):
        raise ChatError(400, "a file URL is file:///ABSOLUTE/PATH", param="messages", code="invalid_url") from None
    try:
        resolved.relative_to(media_root.resolve())
    except ValueError:
        raise ChatError(403, "the file is outside the server's media root", type="permission_error",
                        param="messages", code="outside_media_root") from None
    if not resolved.is_file():
        raise ChatError(404, "no such file under the server's media root", type="not_found_error",
                        param="messages", code="file_not_found")
    return resolved


def submit_url(service: Service, url: str, media_root: Path | None) -> str:
    """The video id for a video_url, submitting the file for encoding where needed."""
    if url.startswith(VIDEO_ID_SCHEME) or KEY.match(url):
        video_id = url[len(VIDEO_ID_SCHEME):] if url.startswith(VIDEO_ID_SCHEME) else url
        service.status(video_id)  # unknown: 404
        return video_id
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        match = DATA_URL.match(url[:256])  # the header only: the payload may be hundreds of MB
        if match is None or not match["mime"].lower().startswith("video/"):
            raise ChatError(400, "a data URL here is data:video/<type>;base64,<data>", param="messages",
                            code="invalid_url")
        payload = url[match.end():]
        limit = service.limits.max_upload_bytes
        if len(payload) // 4 * 3 > limit + 3:
            raise ChatError(413, f"the video is larger than this server's limit of {limit / 2**20:g} MiB",
                            param="messages", code="request_too_large")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ChatError(400, "the data URL is not valid base64", param="messages", code="invalid_url") from None
        path = service.new_upload_path()
        with open(path, "xb") as out:
            out.write(data)
        return service.submit_file(path, "chat-upload", owned=True)["id"]
    if scheme == "file":
        path = media_file(url, media_root)
        return service.submit_file(path, path.name, owned=False)["id"]
    raise ChatError(400, f"unsupported video URL scheme {scheme + ':' if scheme else url[:20]!r}: use a "
                    "data:video/...;base64 URL, mirasol://VIDEO_ID or a file:// path under the server's "
                    "media root", param="messages", code="unsupported_url_scheme")


def wait_ready(service: Service, video_id: str, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        state = service.status(video_id)
        if state["state"] == "ready":
            return
        if state["state"] == "failed":
            raise UploadError(f"this video could not be encoded: {state['error']}")
        if time.monotonic() >= deadline:
            raise ChatError(409, f"the video is still being encoded after {wait_s:g} s ({state['chunks_done']} "
                            f"chunks done); send the request again", param="messages", code="video_not_ready",
                            retry_after=2)
        time.sleep(0.05)


def complete(service: Service, chat: Chat, media_root: Path | None, wait_s: float) -> dict:
    """The answer to a checked chat request: {"answer", "finish_reason", "prompt_tokens", "completion_tokens"}."""
    stream_id = chat.url[len(VIDEO_ID_SCHEME):] if chat.url.startswith(VIDEO_ID_SCHEME) else chat.url
    try:
        if STREAM_ID.match(stream_id):
            video_id = stream_id
            out = service.streams.ask(stream_id, chat.question, max_new_tokens=chat.max_tokens)
        else:
            video_id = submit_url(service, chat.url, media_root)
            wait_ready(service, video_id, wait_s)
            out = service.ask(video_id, chat.question, evidence=False, modalities=False,
                              max_new_tokens=chat.max_tokens)
    except (UploadError, Busy, NotFound, NotReady, StreamRefused) as error:
        raise _from_service_error(error) from None
    prompt = len(prompt_tokens(service.model, service.tokenizer, out["question"]))
    return {"answer": out["answer"], "finish_reason": out["finish_reason"], "prompt_tokens": prompt,
            "completion_tokens": out["answer_tokens"], "video_id": video_id}


def _pieces(text: str) -> list[str]:
    pieces = re.findall(r"\s*\S+", text)
    return pieces if "".join(pieces) == text and pieces else [text]


def _sse(chunks: list[dict]) -> Iterator[str]:
    for chunk in chunks:
        yield f"data: {json.dumps(chunk)}\n\n"
    yield "data: [DONE]\n\n"


def register(app: FastAPI, service: Service, media_root: str | Path | None = None,
             encode_wait_s: float = ENCODE_WAIT_S) -> None:
    """Add /v1/models and /v1/chat/completions to the app (module docstring)."""
    root = Path(media_root).resolve() if media_root is not None else None
    model_name = service.run.name
    created = int(service.run.joinpath("config.json").stat().st_mtime)
    from mirasol.eval.predict import answer_budget

    default_tokens = answer_budget(service.stats)

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "mirasol"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            try:
                body = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise ChatError(400, "the request body is not valid JSON") from None
            chat = parse_chat(body, model_name, default_tokens)
            result = await run_in_threadpool(complete, service, chat, root, encode_wait_s)
        except ChatError as error:
            return error_response(error.status, error.message, error.type, error.param, error.code,
                                  error.retry_after)
        ident, now = f"chatcmpl-{secrets.token_hex(12)}", int(time.time())
        usage = {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"],
                 "total_tokens": result["prompt_tokens"] + result["completion_tokens"]}
        head = {"id": ident, "created": now, "model": model_name, "system_fingerprint": service.run_id}
        if not chat.stream:
            return {**head, "object": "chat.completion", "usage": usage,
                    "choices": [{"index": 0, "finish_reason": result["finish_reason"], "logprobs": None,
                                 "message": {"role": "assistant", "content": result["answer"]}}]}

        def chunk(delta: dict, finish: str | None = None) -> dict:
            return {**head, "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

        chunks = [chunk({"role": "assistant", "content": ""})]
        chunks += [chunk({"content": piece}) for piece in _pieces(result["answer"]) if piece]
        chunks.append(chunk({}, result["finish_reason"]))
        if chat.include_usage:
            chunks.append({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        return StreamingResponse(_sse(chunks), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
