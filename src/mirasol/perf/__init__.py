"""Performance benchmarks: `mirasol bench [WHAT] [--out FILE.json]`.

Each benchmark measures the things it compares side by side in one process (warm-up first, then
several repeats taken round-robin over the variants, so that a change in background load hits
every variant alike; the median is reported), prints a small table and returns a dict. The thread
count is left at torch's default and reported with the torch version.

    step       forward + backward + AdamW step of the tiny preset, batch 8 and 32, both combiners,
               one question per clip vs 4 questions sharing each clip's encoding; model FLOPs per
               sample and, on a GPU, MFU (`--preset base --batch 8 --precision bf16` etc.)
    chunks     encode_media cost vs number of chunks T, chunked model vs one unchunked transformer
    generate   greedy decoding of 32 tokens with and without the KV cache (and: same tokens?)
    data       data-loader time per batch from the clip cache vs the training step on that batch
    memory     memory plan per GPU (weights, gradients, AdamW, activations) for base and mirasol3b on
               1 / 8 / 64 GPUs, ddp vs fsdp, with and without activation checkpointing; checked
               against the measured peak of steps: on the CPU at small sizes, on a GPU base and
               mirasol3b under fsdp with activation checkpointing at the largest batch planned to fit
    prepare    `prepare` throughput on 10 s 480p clips (1 and 2 workers); peak RSS of decoding
               a long vs a short 1080p file (bounded memory)
    store      the clip store on real videos at base and mirasol3b media settings: bytes per clip
               and PSNR per candidate encoding, decode ms per clip, `prepare` clips/s and loader
               samples/s per store format (raw, h264, none), the base step beside them
    long       64 to 1024 frames of the small preset's media: streaming chunk by chunk (with and
               without a window), batch encode_media and one unchunked transformer; time per frame
               and peak RSS, each case in a fresh process
    watch      `mirasol watch`'s real-time factor per preset (tiny, small, base; `--preset tiny,small`)
               beside the `bench step` figure, and its RSS over an hour of video at tiny with --window (perf/watch_speed.py)
    serve      the server's first question about a 30 s video (decode + encode + answer) against
               each later one (stored latents, text decoder only); then 1, 8 and 32 concurrent
               clients, questions answered one at a time vs batched (questions/s, p50 / p95
               latency), the `step` figure beside; `--preset` (default: small)

`all` runs step, chunks, generate and data; `prepare`, `store`, `long`, `watch` and `serve` are slower, and `memory`
starts fresh processes, so they only run when named. Python: ``run("step")`` or the ``bench_*``
functions, whose keyword arguments shrink them (the tests use that).

Media files and the synthetic cache are kept under ``$MIRASOL_BENCH_DIR`` (default:
``<tmp>/mirasol-bench``) so that a second run does not write them again.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

from mirasol.perf.common import (  # noqa: F401  (scripts and child processes import the helpers from here)
    BF16_PEAK_TFLOPS, _load, _train_step, device_peak_tflops, environment, measure, print_table, random_batch,
    work_dir)
from mirasol.perf.long import LONG_VARIANTS, bench_long, long_case  # noqa: F401
from mirasol.perf.lora import bench_lora
from mirasol.perf.media import (  # noqa: F401
    REAL_INPUTS, STORE_CANDIDATES, bench_data, bench_prepare, bench_store, bench_uniform, decode_peak_rss,
    real_media_dir, synthetic_cache, write_test_video)
from mirasol.perf.memory import bench_memory, default_checks, measured_peak  # noqa: F401
from mirasol.perf.serve_speed import bench_serve
from mirasol.perf.watch_speed import bench_watch
from mirasol.perf.model_speed import (  # noqa: F401
    CHUNK_OVERRIDES, UnchunkedBaseline, attention_elements, bench_chunks, bench_generate, bench_step)
from mirasol.errors import UsageError


# ------------------------------------------------------------------------------------------------
# entry points

BENCHMARKS: dict[str, Callable[..., dict]] = {
    "step": bench_step,
    "chunks": bench_chunks,
    "generate": bench_generate,
    "data": bench_data,
    "prepare": bench_prepare,
    "lora": bench_lora,
    "uniform": bench_uniform,
    "store": bench_store,
    "memory": bench_memory,
    "long": bench_long,
    "serve": bench_serve,
    "watch": bench_watch,
}
ALL = ("step", "chunks", "generate", "data")


def run(what: str = "all", out: str | os.PathLike | None = None, step_options: dict | None = None) -> dict:
    """Run one benchmark (or `all` = step, chunks, generate, data); optionally write JSON to `out`.
    step_options: keyword arguments of bench_step (preset, batch_sizes, combiners, ...)."""
    names = list(ALL) if what == "all" else [w.strip() for w in what.split(",")]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise UsageError(f"unknown benchmark {unknown[0]!r} (choose from all, {', '.join(BENCHMARKS)})")
    env = environment()
    print(f"torch {env['torch']}, {env['threads']} threads, {env['cpu_count']} CPUs, {env['date']}, "
          f"load average {env['load_average']}")
    results = {"environment": env}
    for name in names:
        began, load = time.perf_counter(), _load()
        options = step_options or {}
        if name == "serve":  # of the step options, the preset applies here too
            options = {k: v for k, v in options.items() if k == "preset"}
        elif name == "watch":  # a comma-separated list of presets
            options = {"presets": tuple(options["preset"].split(","))} if "preset" in options else {}
        elif name != "step":
            options = {}
        results[name] = BENCHMARKS[name](**options)
        results[name].update(wall_s=time.perf_counter() - began, load_average_before=load, load_average_after=_load())
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2))
        print(f"\nwrote {out}")
    return results
