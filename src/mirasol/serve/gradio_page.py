"""The Gradio page of `mirasol serve`, mounted on the same FastAPI app at /gradio (docs/serving.md).

It is a second face of the same `Service` (no second model load): upload a video or pick one of the
server's examples, watch it, see its encoding progress, ask a question (free, among choices, or
among a question family's training answers), read the answer, the time it took, the answers
without audio and without video, and the timeline: one frame per chunk and, per chunk, the drop
in log p(answer) when the decoder may not read it (evidence.py).

`PageActions` holds what the callbacks do, on plain values (strings, lists, dicts), so the tests
call it without Gradio. Gradio itself is imported only by `build` / `mount`, i.e. only when the page
is asked for; without it `mount` returns the reason and /gradio is not mounted. Gradio's analytics
and update checks are switched off before the import, and the page loads nothing from elsewhere.
"""

from __future__ import annotations

import base64
import html
import io
import os
import shutil
from pathlib import Path

GRADIO_PATH = "/gradio"
# Set before gradio is imported: no telemetry, no update checks, no share links, no SSR (node).
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1",
               "GRADIO_SSR_MODE": "False", "GRADIO_SHARE": "False", "GRADIO_MCP_SERVER": "False"}
NO_FAMILY = "(none: free answer or the choices above)"
PAGE_UPLOADS = 4  # Gradio's folder (its players' copies) holds at most this many largest uploads' bytes


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def bound_folder(folder: Path, max_bytes: int, keep: Path | None = None) -> None:
    """Delete the oldest files under `folder` until the rest holds at most `max_bytes`."""
    files = []
    for p in folder.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                st = p.stat()
                files.append((st.st_mtime, st.st_size, p))
        except OSError:  # deleted meanwhile
            pass
    total = sum(size for _, size, _ in files)
    for _, size, p in sorted(files, key=lambda f: f[0]):
        if total <= max_bytes:
            break
        if keep is not None and p == keep:
            continue
        p.unlink(missing_ok=True)
        total -= size


class PageActions:
    """The page's callbacks on plain values; every error a person can cause comes back as a message
    (`error`), never an exception, so the page shows it and keeps working."""

    def __init__(self, service):
        self.service = service

    # --- choosing a video ---------------------------------------------------------------------
    def families(self) -> list[str]:
        return sorted(f for f, a in self.service.stats.get("answers_by_family", {}).items() if len(a) > 1)

    def examples(self) -> list[str]:
        return sorted(self.service.examples)

    def use_upload(self, path: str | None, name: str | None = None) -> dict:
        """A file the page received (Gradio's copy, for its player): linked (or copied) under a name
        the server makes and submitted as an upload, i.e. bounded in size and probed and decoded in
        the sandbox like `POST /videos`. A refused file's Gradio copy is deleted, and Gradio's
        folder is kept under its bound. -> {"id", "state", "message"} or {"error"}."""
        from mirasol.serve.service import Busy, UploadError

        if not path:
            return {"error": "no file"}
        source = Path(path)
        target = self.service.new_upload_path()
        try:
            size = source.stat().st_size
            limit = self.service.limits.max_upload_bytes
            if size > limit:
                raise UploadError(f"the upload is larger than this server's limit of {limit / 2**20:g} MiB", 413)
            try:
                os.link(source, target)  # Gradio's folder is on the cache's file system: no second copy
            except OSError:
                shutil.copyfile(source, target)
            result = self.service.submit_file(target, name or source.name, owned=True)
        except (UploadError, Busy, OSError) as error:
            target.unlink(missing_ok=True)
            if _inside(source, self.service.page_files):
                source.unlink(missing_ok=True)
            return {"error": str(error)}
        finally:
            bound_folder(self.service.page_files, PAGE_UPLOADS * self.service.limits.max_upload_bytes, keep=source)
        return {**result, "message": self._progress_text(result["id"])}

    def use_example(self, name: str | None) -> dict:
        """-> {"id", "state", "video" (the example's path, for the player), "message"} or {"error"}."""
        from mirasol.serve.service import Busy, NotFound, UploadError

        if not name:
            return {"error": "pick an example first"}
        try:
            result = self.service.submit_example(name)
            video = str(self.service.example_path(name))
        except (UploadError, Busy, NotFound) as error:
            return {"error": str(error)}
        return {**result, "video": video, "message": self._progress_text(result["id"])}

    def progress(self, video_id: str | None) -> dict:
        """The encoding's state: {"state", "chunks_done", "chunks_total", "message", "done"}."""
        if not video_id:
            return {"state": None, "message": "upload a video or pick an example", "done": True}
        from mirasol.errors import MirasolError

        try:
            status = self.service.status(video_id)
        except MirasolError as error:
            return {"state": "failed", "message": f"failed: {error}", "done": True}
        return {**status, "message": self._describe(status), "done": status["state"] in ("ready", "failed")}

    def _progress_text(self, video_id: str) -> str:
        return self.progress(video_id)["message"]

    @staticmethod
    def _describe(status: dict) -> str:
        name, state = status.get("name") or "video", status["state"]
        if state == "ready":
            return f"ready: {name}, {status['chunks_total']} chunks"
        if state == "failed":
            return f"failed: {name}: {status.get('error')}"
        total = status.get("chunks_total")
        return f"{state}: {name}, {status['chunks_done']}{'/' + str(total) if total else ''} chunks"

    # --- asking -------------------------------------------------------------------------------
    def ask(self, video_id: str | None, question: str | None, choices: str | None = None,
            family: str | None = None) -> dict:
        """-> {"answer", "time", "without_audio", "without_video", "note", "timeline": [{"index",
        "start", "end", "drop", "png"}], "measure"} or {"error"}. `choices`: comma-separated."""
        from mirasol.errors import MirasolError

        if not video_id:
            return {"error": "upload a video or pick an example first"}
        choice_list = [c.strip() for c in (choices or "").split(",") if c.strip()] or None
        family = family if family and family != NO_FAMILY else None
        try:
            out = self.service.ask(video_id, question, choice_list, family=family)
            timeline = []
            for seg in out["evidence"]["segments"]:
                first = seg["first_chunk"]
                timeline.append({"index": first, "end_chunk": seg["end_chunk"], "start": seg["start"],
                                 "end": seg["end"], "drop": seg["drop"],
                                 "png": self.service.thumbnail(video_id, first)})
        except MirasolError as error:
            return {"error": str(error)}
        took = f"answered in {out['seconds'] * 1000:.0f} ms (with the controls, in one batch; " \
               f"evidence {out['evidence']['seconds'] * 1000:.0f} ms)"
        return {"answer": out["answer"], "time": took, "seconds": out["seconds"],
                "without_audio": out.get("without_audio"), "without_video": out.get("without_video"),
                "note": out.get("note"), "timeline": timeline, "measure": out["evidence"]["measure"]}


def timeline_html(timeline: list[dict]) -> str:
    """The evidence strip: per chunk (or run of chunks) its frame and a bar of the drop, orange when
    the answer got less likely without it, blue when more. Self-contained (frames as data: URIs)."""
    if not timeline:
        return '<div id="mirasol-timeline" class="empty">ask a question to see the timeline</div>'
    drops = [abs(t["drop"]) for t in timeline if t["drop"] is not None]
    scale = max(drops) if drops and max(drops) > 0 else 1.0
    cells = []
    for t in timeline:
        drop = t["drop"]
        height = 0 if drop is None else max(1, round(60 * abs(drop) / scale))
        color = "#e8590c" if (drop or 0) >= 0 else "#1c7ed6"
        label = "n/a" if drop is None else f"{drop:+.3f}"
        image = base64.b64encode(t["png"]).decode("ascii")
        title = f"chunk {t['index']}: {t['start']:.1f}-{t['end']:.1f} s, drop {label} nats"
        cells.append(
            f'<div class="mirasol-chunk" data-index="{t["index"]}" data-drop="{"" if drop is None else repr(drop)}" '
            f'title="{html.escape(title)}" style="display:inline-flex;flex-direction:column;align-items:center;'
            f'width:56px;margin:0 2px">'
            f'<div style="height:62px;display:flex;align-items:flex-end"><div class="bar" '
            f'style="width:20px;height:{height}px;background:{color}"></div></div>'
            f'<img alt="chunk {t["index"]}" src="data:image/png;base64,{image}" '
            f'style="width:48px;height:48px;image-rendering:pixelated">'
            f'<small>{t["start"]:.0f} s</small><small>{html.escape(label)}</small></div>')
    return ('<div id="mirasol-timeline" style="overflow-x:auto;white-space:nowrap">' + "".join(cells) + "</div>"
            '<p><small>bar: drop in log p(answer), in nats, when the model may not read that chunk '
            '(orange: the answer got less likely without it; blue: more likely)</small></p>')


def gallery_items(timeline: list[dict]) -> list[tuple]:
    """(PIL image, caption) per chunk, for gr.Gallery."""
    from PIL import Image

    items = []
    for t in timeline:
        label = "n/a" if t["drop"] is None else f"{t['drop']:+.3f}"
        items.append((Image.open(io.BytesIO(t["png"])), f"{t['start']:.0f} s: {label}"))
    return items


def build(service):
    """The gr.Blocks of the page over `service` (imports gradio)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    import gradio as gr

    actions = PageActions(service)
    info = service.info()
    with gr.Blocks(title="mirasol serve", analytics_enabled=False, delete_cache=(3600, 3600)) as blocks:
        gr.Markdown(f"## Ask a Mirasol3B run about a video\nrun `{info['run']}`: {info['preset'] or 'custom'} preset, "
                    f"{info['combiner']} combiner, {info['chunk_seconds']:g} s chunks. "
                    "[the plain page](/) · [the API](/docs)", elem_id="mirasol-run")
        video_id = gr.State(None)
        with gr.Row():
            with gr.Column(scale=3):
                video = gr.Video(label="video (upload, or pick an example)", sources=["upload"],
                                 elem_id="mirasol-video", height=320)
                with gr.Row():
                    example = gr.Dropdown(actions.examples(), label="example", value=None, elem_id="mirasol-example",
                                          interactive=True, scale=3)
                    use_example = gr.Button("use example", elem_id="mirasol-use-example", scale=1)
                progress = gr.Textbox(label="encoding", value="upload a video or pick an example", interactive=False,
                                      elem_id="mirasol-progress")
            with gr.Column(scale=2):
                question = gr.Textbox(label="question", placeholder="leave empty for a caption",
                                      elem_id="mirasol-question")
                choices = gr.Textbox(label="choices (optional, comma-separated)", elem_id="mirasol-choices")
                family = gr.Dropdown([NO_FAMILY, *actions.families()], value=NO_FAMILY,
                                     label="or choose among a question family's training answers",
                                     elem_id="mirasol-family")
                ask = gr.Button("ask", variant="primary", elem_id="mirasol-ask")
                answer = gr.Textbox(label="answer", interactive=False, elem_id="mirasol-answer")
                took = gr.Textbox(label="time", interactive=False, elem_id="mirasol-time")
                with gr.Row():
                    no_audio = gr.Textbox(label="without audio", interactive=False, elem_id="mirasol-no-audio")
                    no_video = gr.Textbox(label="without video", interactive=False, elem_id="mirasol-no-video")
        strip = gr.HTML(timeline_html([]), label="timeline", elem_id="mirasol-strip")
        gallery = gr.Gallery(label="one frame per chunk (as the model saw it)", columns=12, height=140,
                             format="png", elem_id="mirasol-gallery", allow_preview=True)
        timer = gr.Timer(0.5, active=False)

        def on_submitted(result: dict):
            if "error" in result:
                return None, f"error: {result['error']}", gr.Timer(active=False)
            return result["id"], result["message"], gr.Timer(active=result["state"] not in ("ready", "failed"))

        def on_upload(path):
            return on_submitted(actions.use_upload(path))

        def on_example(name):
            result = actions.use_example(name)
            return (*on_submitted(result), result.get("video"))

        def on_tick(vid):
            state = actions.progress(vid)
            return state["message"], gr.Timer(active=not state["done"])

        def on_ask(vid, q, c, f):
            out = actions.ask(vid, q, c, f)
            if "error" in out:
                return f"error: {out['error']}", "", "", "", timeline_html([]), []
            note = f" ({out['note']})" if out.get("note") else ""
            return (out["answer"], out["time"], (out["without_audio"] or "") + note, out["without_video"] or "",
                    timeline_html(out["timeline"]), gallery_items(out["timeline"]))

        video.upload(on_upload, video, [video_id, progress, timer])
        use_example.click(on_example, example, [video_id, progress, timer, video])
        timer.tick(on_tick, video_id, [progress, timer])
        outputs = [answer, took, no_audio, no_video, strip, gallery]
        ask.click(on_ask, [video_id, question, choices, family], outputs)
        question.submit(on_ask, [video_id, question, choices, family], outputs)
    return blocks


def mount(app, service, token: str | None = None, path: str = GRADIO_PATH) -> str:
    """Mount the page on `app` at `path`. Returns what happened, for /info and the log: "mounted at
    /gradio", or why not (Gradio not installed, or failed to build). Gradio keeps its files (uploads
    as they arrive, its players' copies) in the service's `page_files` folder, under the cache's
    folder and bounded by `use_upload`."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    os.environ["GRADIO_TEMP_DIR"] = str(service.page_files)  # read by Gradio when the page is built
    try:
        import gradio as gr
    except ImportError as error:
        return f"not mounted: Gradio is not installed (pip install -e '.[serve-gradio]'): {error}"
    try:
        blocks = build(service)
        allowed = [str(p.resolve()) for p in service.examples.values()]  # the player plays these, nothing else
        auth = None
        if token is not None:  # Gradio's own login: any user name, the token as password
            import hmac

            def auth(user: str, password: str) -> bool:
                return hmac.compare_digest(password.encode(), token.encode())
        gr.mount_gradio_app(app, blocks, path=path, allowed_paths=allowed, auth=auth,
                            auth_message="the server's access token is the password (any user name)",
                            max_file_size=service.limits.max_upload_bytes, ssr_mode=False, footer_links=[],
                            enable_monitoring=False, pwa=False, mcp_server=False)
    except Exception as error:  # the API and the plain page keep working
        return f"not mounted: building the Gradio page failed: {error!r}"
    return f"mounted at {path}"
