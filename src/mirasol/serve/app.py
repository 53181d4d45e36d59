"""The HTTP layer of `mirasol serve`: a FastAPI app over `Service` (OpenAPI docs at /docs).

    GET  /                              the page (page.py)
    /gradio                             the Gradio page (gradio_page.py), where Gradio is installed and asked for
    GET  /health                        liveness, queue length (no token needed)
    GET  /info                          the run: preset, combiner, chunking, what it was trained on, limits
    POST /videos                        upload (multipart field `file`) -> {"id", "state"}; 202 while encoding
    POST /examples/{name}               the same for one of the server's example videos
    GET  /examples/{name}/video         an example video's bytes (for the page's player)
    GET  /videos/{id}                   state and progress (chunks done / total); the chunk times when ready
    GET  /videos/{id}/chunks/{t}.png    the first frame of chunk t as the model saw it
    POST /videos/{id}/ask               {"question", "choices"?, "evidence"?, "modalities"?} -> answer, time,
                                        per-chunk evidence, answers without audio / without video;
                                        with a stream's id: the answer from what it has seen so far
    POST /streams, GET /streams[/{id}], POST /streams/{id}/standing, GET /streams/{id}/events (SSE),
    GET /streams/{id}/frame.png, DELETE /streams/{id}   live streams, where --allow-streams allows (streams.py)
    GET  /v1/models, POST /v1/chat/completions   the OpenAI-compatible chat endpoint (openai_api.py)

Errors are JSON {"detail": message}: 400 (streams off, or a URL the server cannot follow), 401
(token), 403 (a stream URL --allow-streams does not allow), 404 (unknown id or example), 409 (still
encoding; a stream with no chunk yet), 413 (upload too large), 422 (not a usable video or
question), 503 + Retry-After (busy);
under /v1/ they take OpenAI's shape {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import hmac

from fastapi import Body, FastAPI, File, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from mirasol.serve import openai_api
from mirasol.serve.page import PAGE
from mirasol.serve.service import Busy, NotFound, NotReady, Service, UploadError
from mirasol.serve.streams import STREAM_ID, AllowList, StreamRefused, Streams

OPEN_PATHS = {"/", "/health", "/docs", "/openapi.json", "/docs/oauth2-redirect"}


class Question(BaseModel):
    question: str | None = Field(None, description="the question; leave out for a caption")
    choices: list[str] | None = Field(None, description="answer by choosing the best-scoring of these")
    evidence: bool = Field(True, description="per-chunk evidence: drop in log p(answer) with the chunk hidden")
    modalities: bool = Field(True, description="also answer with the audio removed and with the video removed")
    family: str | None = Field(None, max_length=100, description="answer by choosing among the answers this question family "
                               "had in training (see /info trained_on.families_with_answers)")
    max_new_tokens: int | None = Field(None, ge=1, le=64, description="free answers: at most this many "
                                       "tokens (default: the longest training answer's length)")
    window: int | None = Field(None, ge=1, description="a stream's id only: answer from its last WINDOW chunks")


class StreamRequest(BaseModel):
    url: str = Field(..., max_length=2000, description="udp://, tcp:// or http(s):// URL the server's "
                     "--allow-streams allows")
    ask: list[str] = Field([], description="standing questions, answered every `every` seconds of video")
    every: float | None = Field(None, gt=0, description="seconds of video between standing answers (default: a chunk)")
    when: list[str] = Field([], description="'question=answer': an alert at the first chunk after which the "
                            "question's answer is that")
    window: int | None = Field(None, ge=1, description="the model attends to, and answers from, the last WINDOW "
                               "chunks (default: the server's --window, else 120)")
    stall_timeout: float | None = Field(None, description="seconds without data after which the stream is stalled "
                                        "(default 10)")
    silent: bool = Field(False, description="follow a stream without audio (the model hears silence)")


class StandingRequest(BaseModel):
    ask: list[str] = Field([], description="more standing questions")
    every: float | None = Field(None, gt=0, description="new seconds of video between standing answers")
    when: list[str] = Field([], description="more 'question=answer' alerts")


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes is answered 413 before it is read (by its
    Content-Length) or as soon as it passes the limit (chunked bodies)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        limit = openai_api.request_limit(path, self.limit)
        message = f"the upload is larger than this server's limit of {self.limit / 2**20:g} MiB"
        refusal = (openai_api.error_response(413, message, code="request_too_large")
                   if openai_api.is_openai_path(path) else JSONResponse({"detail": message}, status_code=413))
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_large = int(value) > limit + 64 * 1024  # the multipart envelope
                except ValueError:
                    too_large = False
                if too_large:
                    return await refusal(scope, receive, send)
        seen, started = 0, False

        async def counting_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit + 64 * 1024:
                    raise _TooLarge()
            return msg

        async def tracking_send(msg):
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await refusal(scope, receive, send)


def create_app(service: Service, token: str | None = None, gradio: bool = False,
               media_root: str | None = None, allow_streams: AllowList | str | list[str] | None = None) -> FastAPI:
    """The app around a loaded service. With `token`, every route but the page, /health and the
    docs needs `Authorization: Bearer <token>` (or `?token=` on GET, for images on the page).
    `gradio`: also mount the Gradio page at /gradio (gradio_page.py) over the same service, where
    Gradio is installed; `app.state.gradio` (and /info's `pages`) says whether it was and why not.
    The Gradio page's own routes check the token by Gradio's login (the token is the password).
    `media_root`: the folder whose files the chat endpoint may read by file:// URL (openai_api.py).
    `allow_streams`: the live streams clients may start (streams.AllowList; default none: off)."""
    app = FastAPI(title="mirasol serve", version="1",
                  description="Ask a trained Mirasol3B model about a video: upload once, ask many times.")
    app.state.service = service
    if allow_streams is not None or service.streams is None:
        Streams(service, allow_streams if isinstance(allow_streams, AllowList) else AllowList(allow_streams))
    app.state.gradio = "not mounted: not asked for"
    gradio_prefix = None

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        path = request.url.path
        in_gradio = gradio_prefix is not None and (path == gradio_prefix or path.startswith(gradio_prefix + "/"))
        if token is not None and path not in OPEN_PATHS and not in_gradio:
            given = request.headers.get("authorization", "")
            given = given[7:] if given.lower().startswith("bearer ") else request.query_params.get("token", "")
            if not hmac.compare_digest(given.encode(), token.encode()):
                if openai_api.is_openai_path(path):
                    return openai_api.error_response(401, "a valid API key is required (Authorization: Bearer "
                                                     "TOKEN, the server's --token)", code="invalid_api_key")
                return JSONResponse({"detail": "a valid access token is required (Authorization: Bearer TOKEN)"},
                                    status_code=401)
        return await call_next(request)

    @app.exception_handler(UploadError)
    async def _upload_error(request, exc: UploadError):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(Busy)
    async def _busy(request, exc: Busy):
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(NotFound)
    async def _not_found(request, exc: NotFound):
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(StreamRefused)
    async def _stream_refused(request, exc: StreamRefused):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(NotReady)
    async def _not_ready(request, exc: NotReady):
        return JSONResponse({"detail": str(exc)}, status_code=409, headers={"Retry-After": "1"})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        return HTMLResponse(PAGE)

    @app.get("/health")
    def health():
        return service.health()

    @app.get("/info")
    def info():
        return {**service.info(), "pages": {"/": "the plain page", "/gradio": app.state.gradio}}

    @app.post("/videos", status_code=202)
    def upload(file: UploadFile = File(..., description="a video file")):
        path = service.new_upload_path()
        limit = service.limits.max_upload_bytes
        size = 0
        try:
            with open(path, "xb") as out:
                while block := file.file.read(1 << 20):
                    size += len(block)
                    if size > limit:
                        raise UploadError(f"the upload is larger than this server's limit of {limit / 2**20:g} MiB",
                                          status=413)
                    out.write(block)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        result = service.submit_file(path, file.filename or "upload", owned=True)
        return _submitted(result)

    @app.post("/examples/{name}", status_code=202)
    def example(name: str):
        return _submitted(service.submit_example(name))

    @app.get("/examples/{name}/video")
    def example_video(name: str):
        return FileResponse(service.example_path(name))

    @app.get("/videos/{video_id}")
    def status(video_id: str):
        return service.status(video_id)

    @app.get("/videos/{video_id}/chunks/{index}.png", response_class=Response)
    def thumbnail(video_id: str, index: int):
        return Response(service.thumbnail(video_id, index), media_type="image/png",
                        headers={"Cache-Control": "max-age=3600"})

    @app.post("/videos/{video_id}/ask")
    def ask(video_id: str, body: Question = Body(...)):
        if STREAM_ID.match(video_id):
            if body.family:
                raise StreamRefused("family applies to videos only; give the choices instead", status=422)
            return service.streams.ask(video_id, body.question, body.choices, body.window, body.max_new_tokens)
        return service.ask(video_id, body.question, body.choices, body.evidence, body.modalities,
                           body.max_new_tokens, body.family)

    @app.post("/streams", status_code=202)
    def start_stream(body: StreamRequest = Body(...)):
        return service.streams.start(body.url, body.ask, body.every, body.when, body.window, body.stall_timeout,
                                     body.silent)

    @app.get("/streams")
    def list_streams():
        return {"streams": service.streams.summaries(), **service.streams.info()}

    @app.get("/streams/{stream_id}")
    def stream_state(stream_id: str):
        return service.streams.get(stream_id).summary(timeline=True)

    @app.post("/streams/{stream_id}/standing")
    def add_standing(stream_id: str, body: StandingRequest = Body(...)):
        return service.streams.add_standing(stream_id, body.ask, body.every, body.when)

    @app.get("/streams/{stream_id}/events")
    def stream_events(stream_id: str):
        return StreamingResponse(service.streams.events(stream_id), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/streams/{stream_id}/frame.png", response_class=Response)
    def stream_frame(stream_id: str):
        return Response(service.streams.frame(stream_id), media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.delete("/streams/{stream_id}")
    def stop_stream(stream_id: str):
        return service.streams.stop(stream_id)

    openai_api.register(app, service, media_root=media_root)
    if gradio:
        from mirasol.serve.gradio_page import GRADIO_PATH, mount

        app.state.gradio = mount(app, service, token=token, path=GRADIO_PATH)
        if app.state.gradio.startswith("mounted"):
            gradio_prefix = GRADIO_PATH
    app.add_middleware(BodyLimit, limit=service.limits.max_upload_bytes)  # outermost: before any parsing
    return app


def _submitted(result: dict) -> JSONResponse:
    return JSONResponse(result, status_code=200 if result["state"] == "ready" else 202)


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(run: str, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          cache_dir: str | None = None, cache_bytes: int = 2 * 2**30, limits=None, window: int | None = None,
          examples: str | None = None, gradio: bool = True, log=None, media_root: str | None = None,
          batch_window_s: float | None = None, max_batch: int | None = None,
          memory_cache_bytes: int | None = None, allow_streams=None) -> None:
    """Load the run and serve the page and API until interrupted. Any address but the loopback
    needs a token (UsageError otherwise)."""
    import os
    from pathlib import Path

    import uvicorn

    from mirasol.errors import UsageError

    if not is_loopback(host) and not token:
        raise UsageError(f"--host {host} makes the server reachable from other machines: give an access token "
                         f"with --token or MIRASOL_SERVE_TOKEN (or listen on 127.0.0.1)")
    if cache_dir is None:
        cache_dir = str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mirasol" / "serve")
    tuning = {k: v for k, v in (("batch_window_s", batch_window_s), ("max_batch", max_batch),
                                ("memory_cache_bytes", memory_cache_bytes)) if v is not None}  # else Service's defaults
    service = Service(run, cache_dir, cache_bytes=cache_bytes, limits=limits, window=window, examples=examples,
                      **tuning)
    app = create_app(service, token=token, gradio=gradio, media_root=media_root, allow_streams=allow_streams)
    shown = f"[{host}]" if ":" in host else host
    if log is not None:
        print(f"mirasol serve: {run} on http://{shown}:{port}/ (API docs: /docs; latent cache: {cache_dir})"
              + (" -- open the page as /#token=TOKEN" if token else ""), file=log, flush=True)
        print(f"mirasol serve: the Gradio page at /gradio: {app.state.gradio}"
              + (" (log in with any user name and the token as password)" if token and gradio
                 and app.state.gradio.startswith("mounted") else ""), file=log, flush=True)
        print(f"mirasol serve: live streams: " + (f"allowed from {service.streams.allow}" if service.streams.allow
              else "off (--allow-streams allows them)"), file=log, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)
