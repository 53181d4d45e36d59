"""`mirasol bench watch`: how fast `mirasol watch` follows a video, per preset, and its memory over
an hour of video.

- Real-time factor (video seconds per wall second) of `watch` on a long-world clip read as fast
  as it decodes: chunks only, and with one question answered every `every` seconds of video;
  random weights (speed does not depend on training). Above 1, the preset keeps up with a live
  source on this machine; below, `watch` drops chunks (its --max-behind policy). Beside it, the
  `bench step` figure of the same preset (training step, batch 8, one question per clip).
- Memory: RSS while `watch --window` follows `hour_seconds` of video at `tiny` (the clip looped
  into one MPEG-TS file, no real-time pacing), at the first answer and at every later one.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import av
import torch

from mirasol.perf.common import print_table, work_dir
from mirasol.perf.long import _proc_status_kb

QUESTION = "what color is the object?"


def random_run(preset: str, folder: Path) -> Path:
    """A run directory holding the preset with random weights (answers of up to 4 tokens)."""
    from mirasol import Mirasol, MirasolConfig
    from mirasol.data.tokenizer import MirasolTokenizer
    from mirasol.run_config import load_run_config
    from mirasol.run_dir import write_run_files

    run = folder / f"run-{preset}"
    if not (run / "model.safetensors").exists():
        config = load_run_config(preset)
        tokenizer = MirasolTokenizer.train([QUESTION, "red", "green", "blue", "yellow"], vocab_size=300)
        write_run_files(run, config.to_dict(), tokenizer, {"labels": [], "answer_prior": {}, "num_samples": 0,
                                                           "max_answer_tokens": 4})
        torch.manual_seed(0)
        Mirasol(MirasolConfig.from_dict(config.to_dict()["model"])).save_pretrained(run)
    return run


def long_world_clip(folder: Path, seconds: int) -> Path:
    from mirasol.corpora.long_world import plan_long, render_clip

    path = folder / f"long-{seconds}s.mp4"
    if not path.exists():
        render_clip(plan_long(10, 0, seconds)[0], path)
    return path


def looped_stream(clip: Path, clip_seconds: float, seconds: float, path: Path) -> Path:
    """`clip` (`clip_seconds` long) repeated back to back into one MPEG-TS file of about `seconds`,
    timestamps running on (a packet that would go back in time, the audio's priming, is left out)."""
    if path.exists():
        return path
    part = path.with_suffix(".part")
    with av.open(str(part), "w", format="mpegts") as out:
        streams, last, offset = None, {}, 0.0
        while offset < seconds:
            with av.open(str(clip)) as inp:
                kept = [s for s in inp.streams if s.type in ("video", "audio")]
                if streams is None:
                    streams = {s.type: out.add_stream_from_template(s) for s in kept}
                for packet in inp.demux(*kept):
                    if packet.dts is None:
                        continue
                    shift = round(offset / packet.time_base)
                    kind = packet.stream.type
                    if kind in last and packet.dts + shift <= last[kind]:
                        continue
                    packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
                    last[kind] = packet.dts
                    packet.stream = streams[kind]
                    out.mux(packet)
            offset += clip_seconds
    part.rename(path)
    return path


class _Recorder:
    """A text stream for watch's JSON lines that notes the RSS at each answer."""

    def __init__(self):
        self.points: list[tuple[float, int | None]] = []

    def write(self, text: str) -> None:
        if text.startswith("{"):
            self.points.append((json.loads(text)["video_seconds"], _proc_status_kb("VmRSS")))

    def flush(self) -> None:
        pass


def _rtf(run: Path, clip: Path, asks: list[str], every: float) -> float:
    from mirasol.watch import watch

    result = watch(str(run), str(clip), asks=asks, every=every, follow=False, as_json=True, out=_Recorder())
    return result.video_seconds / result.wall_seconds


def bench_watch(presets=("tiny", "small", "base"), seconds: int = 32, every: float = 4.0,
                hour_seconds: float = 3600.0, window: int = 8, step_batch: int = 8, repeats: int = 3,
                quiet: bool = False) -> dict:
    from mirasol.perf.model_speed import bench_step
    from mirasol.watch import watch

    folder = work_dir() / "watch"
    folder.mkdir(parents=True, exist_ok=True)
    clip = long_world_clip(folder, seconds)
    rows, table = [], []
    for preset in presets:
        run = random_run(preset, folder)
        _rtf(run, clip, [], every)  # warm-up: first calls pay for allocation
        ingest, answering = [], []
        for _ in range(repeats):  # round-robin, so that background load hits both alike
            ingest.append(_rtf(run, clip, [], every))
            answering.append(_rtf(run, clip, [QUESTION], every))
        ingest, answering = statistics.median(ingest), statistics.median(answering)
        step = bench_step(batch_sizes=(step_batch,), combiners=("transformer",), preset=preset,
                          questions_per_clip=(1,), repeats=2, warmup=1, quiet=True)
        [step_row] = step["results"].values()
        step_ms = 1000 * step_row["median_s"]
        rows.append({"preset": preset, "rtf_chunks": ingest, "rtf_answering": answering, "every_s": every,
                     "step_ms": step_ms, "step_batch": step_batch})
        table.append([preset, ingest, answering, step_ms])
    if not quiet:
        print_table(f"watch: real-time factor (video s per wall s) on a {seconds} s long-world clip, random weights",
                    ["preset", "RTF chunks only", f"RTF + 1 question / {every:g} s", f"bench step ms (b{step_batch})"],
                    table)

    memory = None
    if hour_seconds:
        stream = looped_stream(clip, seconds, hour_seconds, folder / f"loop-{int(hour_seconds)}s.ts")
        recorder = _Recorder()
        began = time.perf_counter()
        result = watch(str(random_run("tiny", folder)), str(stream), asks=[QUESTION], every=hour_seconds / 60,
                       window=window, follow=False, as_json=True, out=recorder)
        memory = {"video_seconds": result.video_seconds, "wall_s": time.perf_counter() - began, "window": window,
                  "rss_kb": recorder.points}
        if not quiet and recorder.points:
            (v0, r0), (v1, r1) = recorder.points[0], recorder.points[-1]
            print(f"tiny, --window {window}: RSS {r0 / 1024:.0f} MiB at {v0:g} s of video, {r1 / 1024:.0f} MiB at "
                  f"{v1:g} s ({result.video_seconds / memory['wall_s']:.0f}x real time)")
    return {"rows": rows, "memory": memory}
