"""Long videos: streaming chunk by chunk, batch encode_media and one unchunked transformer, 64 to 1024 frames."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from mirasol.config import MirasolConfig
from mirasol.model.mirasol import Mirasol
from mirasol.perf.common import print_table
from mirasol.perf.model_speed import UnchunkedBaseline


# ------------------------------------------------------------------------------------------------
# 9. long


def _proc_status_kb(field: str) -> int | None:
    """VmRSS / VmHWM (peak RSS) of this process from /proc/self/status, in kB (Linux only)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


LONG_VARIANTS = ("stream", "stream_window", "batch", "unchunked")


def long_case(variant: str, frames: int, preset: str = "small", window: int = 16, repeats: int = 3,
              overrides: dict | None = None, slow_s: float = 5.0, threads: int | None = None) -> dict:
    """One case of `bench_long`, meant to run in a fresh process (see `bench_long`): build the model,
    reset the peak RSS, make the input, run `variant` once to warm up and then `repeats` times (when
    the first call takes over `slow_s`, it is the one measurement). Returns times and the peak RSS above the RSS before the input
    was made. Inputs are one random chunk repeated: the cost does not depend on the content."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    base = MirasolConfig.preset(preset, **(overrides or {}))
    if frames % base.frames_per_chunk:
        raise ValueError(f"frames={frames} is not a multiple of frames_per_chunk={base.frames_per_chunk}")
    t = frames // base.frames_per_chunk
    cfg = base.replace(num_chunks=t)  # only the unchunked baseline's size depends on it
    g = torch.Generator().manual_seed(0)
    video_chunk = torch.rand(1, base.frames_per_chunk, 3, cfg.image_size, cfg.image_size, generator=g)
    audio_chunk = torch.randn(1, cfg.n_mels, cfg.audio_frames_per_chunk, generator=g)
    model = (UnchunkedBaseline(cfg) if variant == "unchunked" else Mirasol(cfg)).eval()
    rss_before = _proc_status_kb("VmRSS")
    peak_reset = _reset_peak_rss()
    if variant in ("batch", "unchunked"):  # the whole clip is in memory: part of what the batch path costs
        video = video_chunk.repeat(1, t, 1, 1, 1)
        audio = audio_chunk.repeat(1, 1, t)

    def once() -> int:
        with torch.no_grad():
            if variant == "batch":
                return model.encode_media(video, audio).shape[1]
            if variant == "unchunked":
                return model(video, audio).shape[1]
            session = model.stream(max_context_chunks=window if variant == "stream_window" else None)
            for _ in range(t):
                session.push(video_chunk, audio_chunk)
            return session.cache_tokens()

    # Wall time and this process's CPU time: with one thread and other work on the machine, CPU
    # time is the steadier measure of the work done.
    began, cpu_began = time.perf_counter(), time.process_time()
    out = once()
    warmup_s, warmup_cpu_s = time.perf_counter() - began, time.process_time() - cpu_began
    # A call over slow_s is timed once, by this first call: one-time costs are negligible beside it.
    times, cpu_times = ([], []) if warmup_s <= slow_s else ([warmup_s], [warmup_cpu_s])
    for _ in range(repeats if warmup_s <= slow_s else 0):
        began, cpu_began = time.perf_counter(), time.process_time()
        once()
        times.append(time.perf_counter() - began)
        cpu_times.append(time.process_time() - cpu_began)
    peak = _proc_status_kb("VmHWM")
    median, cpu = statistics.median(times), statistics.median(cpu_times)
    r = {"variant": variant, "frames": frames, "chunks": t, "times_s": times, "warmup_s": warmup_s,
         "median_s": median, "ms_per_frame": 1000 * median / frames, "cpu_times_s": cpu_times,
         "cpu_median_s": cpu, "cpu_ms_per_frame": 1000 * cpu / frames,
         "peak_rss_mb": None if peak is None else peak / 1024,
         "peak_above_start_mb": None if peak is None or rss_before is None else (peak - rss_before) / 1024,
         "peak_reset": peak_reset, "threads": torch.get_num_threads()}
    if variant.startswith("stream"):
        r["cache_tokens_per_layer"] = out
    return r


def bench_long(frames=(64, 128, 256, 512, 1024), preset: str = "small", window: int = 16, repeats: int = 3,
               variants=LONG_VARIANTS, unchunked_max_frames: int = 1024, overrides: dict | None = None,
               threads: int | None = 1, timeout_s: float = 900.0, quiet: bool = False) -> dict:
    """Cost vs video length on the `preset`'s media (batch 1, inference), each case in a fresh
    process (so that its peak RSS is its own): (a) streaming chunk by chunk, without and with a
    window of `window` chunks, (b) batch encode_media, (c) one unchunked transformer over all
    tokens of the clip (UnchunkedBaseline: width av_dim, depth video_layers + combiner_layers +
    av_layers). Per length the variants run one after the other. `threads` (default 1): torch
    threads per case; one thread is least disturbed by other work on a shared machine (None: torch's
    default)."""

    code = ("import json, sys; from mirasol.perf import long_case; "
            "print(json.dumps(long_case(**json.loads(sys.argv[1]))))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH", "")])}
    results, rows = {}, []
    for n in frames:
        for variant in variants:
            key = f"{variant}/{n}"
            if variant == "unchunked" and n > unchunked_max_frames:
                results[key] = {"variant": variant, "frames": n, "skipped": f"over unchunked_max_frames={unchunked_max_frames}"}
                continue
            args = dict(variant=variant, frames=n, preset=preset, window=window, repeats=repeats,
                        overrides=overrides, threads=threads)
            try:
                done = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True,
                                      env=env, timeout=timeout_s)
            except subprocess.TimeoutExpired:
                results[key] = {"variant": variant, "frames": n, "failed": f"over {timeout_s:g} s"}
                continue
            if done.returncode != 0:  # e.g. killed for memory
                tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
                results[key] = {"variant": variant, "frames": n, "failed": f"exit {done.returncode}: {tail}"}
                continue
            results[key] = json.loads(done.stdout.strip().splitlines()[-1])
    for n in frames:
        row = [n]
        for variant in variants:
            r = results[f"{variant}/{n}"]
            row += [r["cpu_ms_per_frame"], r["ms_per_frame"], r["peak_above_start_mb"]] if "median_s" in r \
                else ["-", "-", "-"]
        rows.append(row)
    summary = {}
    lo, hi = frames[0], frames[-1]
    for variant in variants:
        a, b = results.get(f"{variant}/{lo}", {}), results.get(f"{variant}/{hi}", {})
        if "ms_per_frame" in a and "ms_per_frame" in b:
            summary[f"{variant}_cpu_ms_per_frame_growth"] = b["cpu_ms_per_frame"] / a["cpu_ms_per_frame"]
            summary[f"{variant}_ms_per_frame_growth"] = b["ms_per_frame"] / a["ms_per_frame"]
            if a.get("peak_above_start_mb") and b.get("peak_above_start_mb") is not None:
                summary[f"{variant}_peak_mb_growth"] = b["peak_above_start_mb"] / a["peak_above_start_mb"]
    for n in frames:
        u, b = results.get(f"unchunked/{n}", {}), results.get(f"batch/{n}", {})
        if "median_s" in u and "median_s" in b:
            summary[f"unchunked_over_batch_cpu_{n}"] = u["cpu_median_s"] / b["cpu_median_s"]
            summary[f"unchunked_over_batch_{n}"] = u["median_s"] / b["median_s"]
    cfg = MirasolConfig.preset(preset, **(overrides or {}))
    result = {"preset": preset, "overrides": overrides, "window_chunks": window, "repeats": repeats, "threads": threads,
              "frames_per_chunk": cfg.frames_per_chunk, "tokens_per_chunk": cfg.video_tokens_per_chunk
              + cfg.audio_tokens_per_chunk, "unchunked_depth": cfg.video_layers + cfg.combiner_layers + cfg.av_layers,
              "unchunked_width": cfg.av_dim,
              "memory_note": "peak RSS (VmHWM from /proc/self/status) of a fresh process per case, reset after the "
                             "model is built (clear_refs), minus the RSS at that moment: it counts the input clip "
                             "(batch, unchunked: the whole clip; stream: one chunk), activations, caches and latents",
              "results": results, "summary": summary}
    if not quiet:
        headers = ["frames"]
        for variant in variants:
            headers += [f"{variant} cpu ms/frame", "wall", "peak MB"]
        print_table(f"long: {preset} preset media, batch 1, inference, {threads or 'default'} thread(s); "
                    f"stream_window = last {window} chunks; "
                    f"median of {repeats} (one call when it takes > 5 s); peak RSS above start, fresh process per case",
                    headers, rows)
        print("  " + ", ".join(f"{k} {v:.2f}" for k, v in summary.items()))
    return result
