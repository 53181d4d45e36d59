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
               against the measured peak of CPU steps at small sizes
    prepare    `prepare` throughput on 10 s 480p clips (1 and 2 workers); peak RSS of decoding
               a long vs a short 1080p file (bounded memory)
    store      the clip store on real videos at base and mirasol3b media settings: bytes per clip
               and PSNR per candidate encoding, decode ms per clip, `prepare` clips/s and loader
               samples/s per store format (raw, h264, none), the base step beside them
    long       64 to 1024 frames of the small preset's media: streaming chunk by chunk (with and
               without a window), batch encode_media and one unchunked transformer; time per frame
               and peak RSS, each case in a fresh process

`all` runs step, chunks, generate and data; `prepare`, `store` and `long` are slower, and `memory`
starts fresh processes, so they only run when named. Python: ``run("step")`` or the ``bench_*``
functions, whose keyword arguments shrink them (the tests use that).

Media files and the synthetic cache are kept under ``$MIRASOL_BENCH_DIR`` (default:
``<tmp>/mirasol-bench``) so that a second run does not write them again.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from mirasol.config import MirasolConfig
from mirasol.errors import UsageError
from mirasol.model import IGNORE_INDEX
from mirasol.model.encoders import AudioEncoder, VideoEncoder
from mirasol.model.layers import Encoder
from mirasol.model.mirasol import Mirasol, split_chunks

# ------------------------------------------------------------------------------------------------
# helpers


def environment() -> dict:
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": _load(),
    }


def _load() -> list[float] | None:
    """1, 5 and 15 minute load averages: above ~0 before a run, other work shares the cores and
    (with torch using every core) spoils the timings badly."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def work_dir() -> Path:
    path = Path(os.environ.get("MIRASOL_BENCH_DIR") or Path(tempfile.gettempdir()) / "mirasol-bench")
    path.mkdir(parents=True, exist_ok=True)
    return path


def measure(variants: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1) -> dict[str, dict]:
    """Time each variant `repeats` times (after `warmup` untimed calls), round-robin over the
    variants. Returns {name: {"median_s", "min_s", "times_s"}}."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            began = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - began)
    return {name: {"median_s": statistics.median(t), "min_s": min(t), "times_s": t} for name, t in times.items()}


def print_table(title: str, headers: list[str], rows: list[list], file=sys.stdout) -> None:
    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print(f"\n{title}", file=file)
    print("  " + "  ".join(h.rjust(w) for h, w in zip(headers, widths)), file=file)
    for r in cells:
        print("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths)), file=file)
    file.flush()


def random_batch(cfg: MirasolConfig, batch: int, text_len: int = 24, prompt_len: int = 16, seed: int = 0,
                 questions_per_clip: int = 1) -> dict:
    """Random media and a prompt + answer of `text_len` tokens (loss on the last text_len - prompt_len);
    with questions_per_clip k, `batch` text rows ask about batch / k clips (media_index)."""
    g = torch.Generator().manual_seed(seed)
    clips = batch // questions_per_clip
    video = torch.rand(clips, cfg.num_frames, 3, cfg.image_size, cfg.image_size, generator=g)
    audio = torch.randn(clips, cfg.n_mels, cfg.audio_frames, generator=g)
    ids = torch.randint(4, cfg.vocab_size, (batch, text_len), generator=g)
    labels = ids.clone()
    labels[:, :prompt_len] = IGNORE_INDEX
    media_index = torch.arange(clips).repeat_interleave(questions_per_clip)
    return {"video": video, "audio": audio, "input_ids": ids, "labels": labels, "media_index": media_index}


def _train_step(model: Mirasol, optimizer: torch.optim.Optimizer, batch: dict, bf16: bool = False) -> None:
    with torch.autocast(batch["video"].device.type, dtype=torch.bfloat16, enabled=bf16):
        out = model(batch["video"], batch["audio"], batch["input_ids"], batch["labels"],
                    media_index=batch["media_index"])
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if batch["video"].is_cuda:
        torch.cuda.synchronize()  # time the work, not its queueing


# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' data sheets; matched
# against torch.cuda.get_device_name(). Set MIRASOL_PEAK_TFLOPS for any other device.
BF16_PEAK_TFLOPS = {
    "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H200": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0,
    "A100": 312.0, "L40S": 362.0, "L4": 121.0,
}


def device_peak_tflops(device: torch.device) -> float | None:
    """The device's dense bf16 peak (TFLOP/s), or None (CPU, or a GPU not in the table)."""
    if os.environ.get("MIRASOL_PEAK_TFLOPS"):
        return float(os.environ["MIRASOL_PEAK_TFLOPS"])
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(BF16_PEAK_TFLOPS, key=len, reverse=True):  # the most specific name first
        if key in name:
            return BF16_PEAK_TFLOPS[key]
    return None


# ------------------------------------------------------------------------------------------------
# 1. step


def bench_step(batch_sizes=(8, 32), combiners=("transformer", "ttm"), preset: str = "tiny",
               repeats: int = 5, warmup: int = 2, overrides: dict | None = None, quiet: bool = False,
               questions_per_clip=(1, 4), device: str = "auto", precision: str = "auto",
               text_len: int = 24) -> dict:
    """Forward + backward + AdamW step time per (combiner, batch size, questions per clip);
    samples (text rows) per second; model FLOPs per sample counted analytically
    (`mirasol.cost.model_flops`: 3x the forward's matmul FLOPs) and the FLOP/s they make; on a GPU
    whose bf16 peak is known, MFU = achieved model FLOP/s / peak. Questions per clip k: the batch's
    rows ask about batch / k clips, each encoded once (`train.questions_per_clip`)."""
    from mirasol.cost import model_flops
    from mirasol.train.loop import adamw_kernel

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    bf16 = precision == "bf16" or (precision == "auto" and dev.type == "cuda")
    peak = device_peak_tflops(dev)
    torch.manual_seed(0)
    variants, meta = {}, {}
    for combiner in combiners:
        cfg = MirasolConfig.preset(preset, combiner=combiner, **(overrides or {}))
        model = Mirasol(cfg).to(dev).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **adamw_kernel(dev))  # as in training
        for bs in batch_sizes:
            for k in questions_per_clip:
                if bs % k:
                    continue
                name = f"{combiner}/b{bs}/k{k}"
                batch = {key: v.to(dev) for key, v in random_batch(cfg, bs, text_len, questions_per_clip=k).items()}
                variants[name] = (lambda m=model, o=optimizer, b=batch: _train_step(m, o, b, bf16))
                meta[name] = {"combiner": combiner, "batch": bs, "questions_per_clip": k,
                              "parameters": model.num_parameters()["total"],
                              "flops_per_sample": model_flops(cfg, text_len, k)["train"]}
    times = measure(variants, repeats, warmup)
    rows = []
    for name, t in times.items():
        r = meta[name]
        r.update(t)
        r["samples_per_s"] = r["batch"] / t["median_s"]
        r["model_tflops_per_s"] = r["samples_per_s"] * r["flops_per_sample"] / 1e12
        r["mfu"] = r["model_tflops_per_s"] / peak if peak else None
        rows.append([r["combiner"], r["batch"], r["questions_per_clip"], 1000 * t["median_s"], 1000 * t["min_s"],
                     r["samples_per_s"], r["flops_per_sample"] / 1e9, r["model_tflops_per_s"],
                     f"{100 * r['mfu']:.1f} %" if peak else "-"])
    result = {"preset": preset, "overrides": overrides or {}, "repeats": repeats, "warmup": warmup,
              "text_len": text_len, "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
              "precision": "bf16" if bf16 else "fp32", "peak_bf16_tflops": peak,
              "flops_note": "model FLOPs per sample = 3 x forward matmul FLOPs (mirasol.cost.model_flops); "
                            "recomputation is not counted", "results": meta}
    if not quiet:
        print_table(f"step: {preset} preset, forward + backward + AdamW on {result['device']}, {result['precision']} "
                    f"(median of {repeats})",
                    ["combiner", "batch", "questions/clip", "median ms", "min ms", "samples/s", "GFLOP/sample",
                     "TFLOP/s", "MFU"], rows)
        if not peak:
            print("  MFU needs a GPU with a known bf16 peak (or MIRASOL_PEAK_TFLOPS); FLOP/s shown as measured")
    return result


# ------------------------------------------------------------------------------------------------
# 2. chunks


class UnchunkedBaseline(nn.Module):
    """The design Mirasol avoids: one transformer over every video and audio token of the whole
    clip at once (T * (video_tokens_per_chunk + audio_tokens_per_chunk) tokens), with the same
    patch embeddings, width av_dim and the depth a token passes through in the chunked model
    (video_layers + combiner_layers + av_layers). `bench_chunks` sets video_dim = audio_dim = av_dim,
    so that both models have one width."""

    def __init__(self, cfg: MirasolConfig):
        super().__init__()
        d = cfg.av_dim
        self.cfg = cfg
        self.depth = cfg.video_layers + cfg.combiner_layers + cfg.av_layers
        self.t, self.p = cfg.tubelet_size, cfg.patch_size  # what the encoders' patchify methods read
        self.pm, self.pf = cfg.audio_patch_mels, cfg.audio_patch_frames
        self.video_embed = nn.Linear(cfg.tubelet_size * 3 * cfg.patch_size ** 2, d)
        self.audio_embed = nn.Linear(cfg.audio_patch_mels * cfg.audio_patch_frames, d)
        self.tokens = cfg.num_chunks * (cfg.video_tokens_per_chunk + cfg.audio_tokens_per_chunk)
        self.pos = nn.Parameter(torch.randn(self.tokens, d) * 0.02)
        self.modality = nn.Parameter(torch.randn(2, d) * 0.02)
        self.encoder = Encoder(d, cfg.av_heads, self.depth, cfg.mlp_ratio, cfg.dropout)

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        video_chunks, audio_chunks = split_chunks(video, audio, self.cfg)
        b, t = video_chunks.shape[:2]
        # the same tubelets and log-mel patches as the chunked encoders (their patchify methods)
        v = self.video_embed(VideoEncoder.patchify(self, (video_chunks.flatten(0, 1) - 0.5) * 4.0))
        a = self.audio_embed(AudioEncoder.patchify(self, audio_chunks.flatten(0, 1)))
        v, a = v + self.modality[0], a + self.modality[1]
        x = torch.cat([v.reshape(b, -1, v.shape[-1]), a.reshape(b, -1, a.shape[-1])], dim=1) + self.pos
        return self.encoder(x)  # full (non-causal) attention over all tokens of the clip


def attention_elements(cfg: MirasolConfig, batch: int = 1) -> dict[str, int]:
    """Elements of the attention score matrices (B x heads x Lq x Lk, summed over layers) of one
    encode_media call (transformer combiner) and of the unchunked baseline: counted, not measured."""
    t, nv, na, m = cfg.num_chunks, cfg.video_tokens_per_chunk, cfg.audio_tokens_per_chunk, cfg.combiner_tokens
    chunked = batch * t * (cfg.video_layers * cfg.video_heads * nv ** 2 + cfg.audio_layers * cfg.audio_heads * na ** 2
                           + cfg.combiner_layers * cfg.av_heads * (nv + na + m) ** 2)
    chunked += batch * cfg.av_layers * cfg.av_heads * (t * m) ** 2
    depth = cfg.video_layers + cfg.combiner_layers + cfg.av_layers
    baseline = batch * depth * cfg.av_heads * (t * (nv + na)) ** 2
    return {"chunked": chunked, "baseline": baseline}


# tiny widths (video_dim = audio_dim = av_dim = 64), 64 px frames, 4 frames per 1 s chunk:
# 128 video + 20 audio tokens per chunk
CHUNK_OVERRIDES = dict(image_size=64, frames_per_chunk=4, fps=4.0, video_dim=64, audio_dim=64, av_dim=64)


def bench_chunks(chunks=(2, 4, 8, 16), batch: int = 2, repeats: int = 5, warmup: int = 1,
                 overrides: dict | None = None, quiet: bool = False) -> dict:
    """encode_media time vs number of chunks T: chunked Mirasol vs UnchunkedBaseline (inference)."""
    overrides = {**CHUNK_OVERRIDES, **(overrides or {})}
    results = {}
    rows = []
    for t in chunks:
        torch.manual_seed(0)
        cfg = MirasolConfig.preset("tiny", num_chunks=t, **overrides)
        model, baseline = Mirasol(cfg).eval(), UnchunkedBaseline(cfg).eval()
        g = torch.Generator().manual_seed(0)
        video = torch.rand(batch, cfg.num_frames, 3, cfg.image_size, cfg.image_size, generator=g)
        audio = torch.randn(batch, cfg.n_mels, cfg.audio_frames, generator=g)
        with torch.no_grad():
            times = measure({"chunked": lambda: model.encode_media(video, audio),
                             "baseline": lambda: baseline(video, audio)}, repeats, warmup)
        elements = attention_elements(cfg, batch)
        r = {
            "num_chunks": t,
            "clip_seconds": cfg.clip_seconds,
            "chunked_tokens_per_chunk": cfg.video_tokens_per_chunk + cfg.audio_tokens_per_chunk,
            "chunked_av_tokens": t * cfg.combiner_tokens,
            "baseline_tokens": baseline.tokens,
            "chunked": times["chunked"],
            "baseline": times["baseline"],
            "chunked_ms_per_chunk": 1000 * times["chunked"]["median_s"] / t,
            "baseline_ms_per_chunk": 1000 * times["baseline"]["median_s"] / t,
            "baseline_over_chunked": times["baseline"]["median_s"] / times["chunked"]["median_s"],
            "attention_elements": elements,
            "attention_elements_ratio": elements["baseline"] / elements["chunked"],
        }
        results[str(t)] = r
        rows.append([t, baseline.tokens, 1000 * times["chunked"]["median_s"], r["chunked_ms_per_chunk"],
                     1000 * times["baseline"]["median_s"], r["baseline_ms_per_chunk"], r["baseline_over_chunked"],
                     elements["chunked"] / 1e6, elements["baseline"] / 1e6])
    first, last = results[str(chunks[0])], results[str(chunks[-1])]
    growth = chunks[-1] / chunks[0]
    summary = {
        "length_growth": growth,
        "chunked_time_growth": last["chunked"]["median_s"] / first["chunked"]["median_s"],
        "baseline_time_growth": last["baseline"]["median_s"] / first["baseline"]["median_s"],
    }
    cfg = MirasolConfig.preset("tiny", num_chunks=chunks[0], **overrides)
    result = {"overrides": overrides, "batch": batch, "repeats": repeats, "warmup": warmup,
              "baseline_depth": cfg.video_layers + cfg.combiner_layers + cfg.av_layers, "width": cfg.av_dim,
              "memory_note": "attention_elements are counted analytically (B x heads x Lq x Lk summed over "
                             "layers), not measured; SDPA's CPU kernels may not materialise these matrices, "
                             "but the compute scales with them",
              "results": results, "summary": summary}
    if not quiet:
        print_table(f"chunks: encode_media, tiny + {overrides}, batch {batch} (median of {repeats}); "
                    "attention elements counted, in millions",
                    ["T", "base tokens", "chunked ms", "ms/chunk", "baseline ms", "ms/chunk", "base/chunked",
                     "attn M chunked", "attn M base"], rows)
        print(f"  T x{growth:g}: chunked time x{summary['chunked_time_growth']:.2f}, "
              f"baseline time x{summary['baseline_time_growth']:.2f}")
    return result


# ------------------------------------------------------------------------------------------------
# 3. generate


def bench_generate(batch: int = 8, new_tokens: int = 32, prompt_len: int = 12, preset: str = "tiny",
                   repeats: int = 3, warmup: int = 1, overrides: dict | None = None, quiet: bool = False) -> dict:
    """Greedy generation of `new_tokens` tokens with and without the KV cache, from the same
    precomputed AV latents. EOS is disabled (eos_id=-1) so that every row runs the full length."""
    from mirasol.model import generation

    torch.manual_seed(0)
    cfg = MirasolConfig.preset(preset, **(overrides or {}))
    cfg = cfg.replace(max_text_len=max(cfg.max_text_len, prompt_len + new_tokens))
    model = Mirasol(cfg).eval()
    g = torch.Generator().manual_seed(1)
    video = torch.rand(batch, cfg.num_frames, 3, cfg.image_size, cfg.image_size, generator=g)
    audio = torch.randn(batch, cfg.n_mels, cfg.audio_frames, generator=g)
    prompts = torch.randint(4, cfg.vocab_size, (batch, prompt_len), generator=g)
    for row in range(1, batch, 2):  # ragged prompts: some rows are shorter (padding is repacked left)
        prompts[row, prompt_len - row % prompt_len:] = cfg.pad_token_id
    with torch.no_grad():
        memory = model.encode_media(video, audio).flatten(1, 2)
    outputs = {}

    def run(use_cache: bool):
        ids = generation.generate(model.text_decoder, memory, prompts, new_tokens, pad_id=cfg.pad_token_id,
                                  eos_id=-1, use_cache=use_cache)
        outputs[use_cache] = ids
        return ids

    times = measure({"cached": lambda: run(True), "uncached": lambda: run(False)}, repeats, warmup)
    same = bool(torch.equal(outputs[True], outputs[False]))
    n = outputs[True].shape[1]
    result = {
        "preset": preset, "batch": batch, "new_tokens": n, "prompt_len": prompt_len, "repeats": repeats,
        "cached": times["cached"], "uncached": times["uncached"],
        "cached_ms_per_token": 1000 * times["cached"]["median_s"] / n,
        "uncached_ms_per_token": 1000 * times["uncached"]["median_s"] / n,
        "speedup": times["uncached"]["median_s"] / times["cached"]["median_s"],
        "identical_tokens": same,
    }
    if not quiet:
        print_table(f"generate: greedy, {preset} preset, batch {batch}, {n} new tokens (median of {repeats})",
                    ["KV cache", "total ms", "ms/token"],
                    [["yes", 1000 * times["cached"]["median_s"], result["cached_ms_per_token"]],
                     ["no", 1000 * times["uncached"]["median_s"], result["uncached_ms_per_token"]]])
        print(f"  speed-up {result['speedup']:.2f}x; cached == uncached tokens: {same}")
    return result


# ------------------------------------------------------------------------------------------------
# 4. data


def synthetic_cache(cfg: MirasolConfig, num: int = 40, root: Path | None = None) -> tuple[Path, Path]:
    """(train manifest, cache dir) of the built-in dataset with `num` clips, made once and reused."""
    from mirasol.data.cache import prepare
    from mirasol.datasets.synth import synthesize

    root = root or work_dir() / f"synth{num}"
    manifest = root / "data" / "train.jsonl"
    world = root / "data" / "world.json"
    if not (manifest.exists() and world.exists() and json.loads(world.read_text()).get("num") == num):
        synthesize(root / "data", num=num, seed=0, progress=False)
    cache_dir = root / f"cache-{cfg.image_size}px-{cfg.num_chunks}x{cfg.frames_per_chunk}"
    prepare([manifest], cache_dir, cfg, progress=False)  # only decodes clips not cached yet
    return manifest, cache_dir


def bench_data(batch: int = 32, num_clips: int = 40, preset: str = "tiny", repeats: int = 5, warmup: int = 1,
               root: Path | None = None, quiet: bool = False) -> dict:
    """Time per batch of the training data loader (ClipDataset + collate from the clip cache,
    DataLoader with 0 workers as in training) vs the training step on the same batch."""
    from mirasol.data.cache import ClipCache
    from mirasol.data.dataset import ClipDataset, EpochBatches, collate
    from mirasol.datasets.manifest import read_manifest
    from mirasol.data.tokenizer import MirasolTokenizer, tokenizer_texts

    cfg = MirasolConfig.preset(preset)
    began = time.perf_counter()
    manifest, cache_dir = synthetic_cache(cfg, num_clips, root)
    setup_s = time.perf_counter() - began
    samples = read_manifest(manifest)
    tokenizer = MirasolTokenizer.train(tokenizer_texts(samples), vocab_size=cfg.vocab_size)
    dataset = ClipDataset(samples, ClipCache(cache_dir, cfg), tokenizer, cfg.max_text_len)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=EpochBatches(len(dataset), batch, seed=0), num_workers=0,
        collate_fn=lambda items: collate(items, tokenizer.pad_id))
    batches = iter(loader)
    fixed = next(batches)
    torch.manual_seed(0)
    model = Mirasol(cfg).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = measure({"loader": lambda: next(batches), "step": lambda: _train_step(model, optimizer, fixed)},
                    repeats, warmup)
    ratio = times["loader"]["median_s"] / times["step"]["median_s"]
    result = {
        "preset": preset, "batch": batch, "clips_cached": len(ClipCache(cache_dir, cfg).index),
        "rows": len(dataset), "setup_s": setup_s, "repeats": repeats,
        "loader": times["loader"], "step": times["step"],
        "loader_ms_per_batch": 1000 * times["loader"]["median_s"],
        "step_ms_per_batch": 1000 * times["step"]["median_s"],
        "loader_over_step": ratio,
        "loader_keeps_up": ratio < 1.0,
        "note": "cache files are in the page cache (warm); loader is DataLoader(num_workers=0) as in training",
    }
    if not quiet:
        print_table(f"data: {preset} preset, batch {batch}, cache of {result['clips_cached']} clips / "
                    f"{len(dataset)} rows (median of {repeats})",
                    ["what", "ms/batch"], [["loader (cache + collate)", result["loader_ms_per_batch"]],
                                           ["train step", result["step_ms_per_batch"]]])
        print(f"  loader / step = {ratio:.3f}: the loader {'keeps' if ratio < 1 else 'does NOT keep'} up "
              "with one process")
    return result


# ------------------------------------------------------------------------------------------------
# 5. prepare


def _moving_frames(seconds: float, fps: int, h: int, w: int):
    """Moving gradients and a sliding box (some motion for the encoder)."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx % 256, yy % 256, ((xx + yy) // 4) % 256], axis=-1).astype(np.uint8)
    box = max(16, h // 6)
    for k in range(int(round(seconds * fps))):
        image = np.roll(base, 4 * k, axis=1)
        x0 = (10 * k) % (w - box)
        y0 = (3 * k) % (h - box)
        image[y0:y0 + box, x0:x0 + box] = 255
        yield image


def write_test_video(path: Path, seconds: float, size: tuple[int, int], fps: int = 30, sample_rate: int = 44100,
                     crf: int = 28) -> Path:
    """A `seconds` long H.264 + AAC (a 440 Hz tone) file of size (width, height); kept if it exists."""
    from mirasol.media.writer import write_video

    if path.exists():
        return path
    w, h = size
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    audio = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    tmp = path.with_name(path.stem + ".part.mp4")
    write_video(tmp, _moving_frames(seconds, fps, h, w), fps, audio, sample_rate, crf=crf)
    tmp.replace(path)
    return path


_RSS_CHILD = r"""
import json, resource, sys, time
import torch
from mirasol import MirasolConfig
from mirasol.media import load_clip
from mirasol.media import decode
path, seconds, mode = sys.argv[1], float(sys.argv[2]), sys.argv[3]
decoded = [0]  # frames the decoder produced (each passes through the sampler)
push = decode._FrameSampler.push
decode._FrameSampler.push = lambda self, *a: (decoded.__setitem__(0, decoded[0] + 1), push(self, *a))[1]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if mode == "whole":  # tiny media settings with 1 s chunks, as many as the file lasts: every frame is decoded
    cfg = MirasolConfig.preset("tiny", num_chunks=max(1, int(seconds // 1)))
elif mode.startswith("uniform:"):  # a preset's chunks spread over the whole file (seeks between samples)
    cfg = MirasolConfig.preset(mode.split(":")[1], clip_window="uniform")
else:  # the tiny preset's 4 s clip, taken from the middle of the file (seeks)
    cfg = MirasolConfig.preset("tiny", clip_window="center")
began = time.perf_counter()
clip = load_clip(path, cfg)
print(json.dumps({"rss_before_kb": before, "seconds_decoded": clip.valid_seconds,
                  "decode_s": time.perf_counter() - began, "frames": int(clip.video.shape[0]),
                  "frames_decoded": decoded[0], "covers_s": clip.end - clip.start,
                  "output_mb": (clip.video.numel() + clip.audio.numel()) * 4 / 2**20}))
"""


def decode_peak_rss(path: Path, seconds: float, mode: str = "whole") -> dict:
    """Decode `path` in a fresh child process and return its peak RSS, which comes from
    getrusage(RUSAGE_CHILDREN) read by a wrapper process that has only that one child.
    mode "whole": tiny media settings with the clip spanning the file (every frame decoded);
    mode "center": the tiny preset's 4 s clip from the middle of the file."""
    wrapper = ("import resource, subprocess, sys, json;"
               "out = subprocess.run([sys.executable, '-c'] + sys.argv[1:],"
               " check=True, capture_output=True, text=True).stdout;"
               "r = json.loads(out.strip().splitlines()[-1]);"
               "r['peak_rss_kb'] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss;"
               "print(json.dumps(r))")
    out = subprocess.run([sys.executable, "-c", wrapper, _RSS_CHILD, str(path), str(seconds), mode],
                         check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    r["mode"] = mode
    r["peak_rss_mb"] = r["peak_rss_kb"] / 1024
    r["decode_increment_mb"] = (r["peak_rss_kb"] - r["rss_before_kb"]) / 1024
    return r


def bench_prepare(num_clips: int = 8, clip_seconds: float = 10.0, workers=(1, 2), long_seconds: float = 60.0,
                  short_seconds: float = 5.0, hd_fps: int = 30, presets=("tiny", "small"), repeats: int = 3,
                  root: Path | None = None, quiet: bool = False) -> dict:
    """`prepare` throughput (clips/s) on 480p clips with audio for 1 and 2 workers, and the peak RSS
    of decoding a long vs a short 1080p file. Each preset's media settings decide how much of a
    clip is decoded (clip_window=start: tiny keeps the first 4 s at 2 fps 32 px, small 8 s at 4 fps 64 px)."""
    from mirasol.data.cache import prepare

    root = root or work_dir()
    media = root / "media"
    media.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    source = write_test_video(media / f"480p_{clip_seconds:g}s.mp4", clip_seconds, (854, 480))
    clips = []
    for i in range(num_clips):  # copies of one file: same decoding cost, distinct cache keys
        copy = media / f"480p_{clip_seconds:g}s_{i}.mp4"
        if not copy.exists():
            shutil.copyfile(source, copy)
        clips.append(copy)
    manifest = media / f"prepare_{num_clips}.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"c{i}", "video": str(p), "task": "caption", "answer": "a clip"})
                                + "\n" for i, p in enumerate(clips)))
    long_file = write_test_video(media / f"1080p_{long_seconds:g}s_{hd_fps}fps.mp4", long_seconds, (1920, 1080),
                                 fps=hd_fps, crf=35)
    short_file = write_test_video(media / f"1080p_{short_seconds:g}s_{hd_fps}fps.mp4", short_seconds, (1920, 1080),
                                  fps=hd_fps, crf=35)
    setup_s = time.perf_counter() - began

    from mirasol.media import load_clip

    def prepare_once(cfg: MirasolConfig, w: int) -> None:
        with tempfile.TemporaryDirectory(dir=root) as cache_dir:  # a fresh cache: every clip is decoded
            report = prepare([manifest], cache_dir, cfg, workers=w, progress=False)
        if report["ok"] != len(clips):
            raise RuntimeError(f"prepare cached {report['ok']} of {len(clips)} clips: {report['skipped'][:1]}")

    variants = {}
    for preset in presets:
        cfg = MirasolConfig.preset(preset)
        load_clip(clips[0], cfg)  # warm-up: imports, codecs, page cache
        for w in workers:
            variants[f"{preset}/w{w}"] = (lambda c=cfg, w=w: prepare_once(c, w))
    times = measure(variants, repeats, warmup=0)
    throughput, rows = {}, []
    for name, t in times.items():
        preset, w = name.split("/w")
        cfg = MirasolConfig.preset(preset)
        throughput[name] = {"preset": preset, "workers": int(w), "clips": len(clips), **t,
                            "clip_seconds_decoded": cfg.clip_seconds, "clips_per_s": len(clips) / t["median_s"]}
        rows.append([preset, f"{cfg.clip_seconds:g} s", int(w), 1000 * t["median_s"] / len(clips),
                     len(clips) / t["median_s"], len(clips) / t["min_s"]])
    rss = {f"{name}/{mode}": decode_peak_rss(path, secs, mode) for mode in ("whole", "center")
           for name, path, secs in (("long", long_file, long_seconds), ("short", short_file, short_seconds))}
    ratios = {mode: rss[f"long/{mode}"]["peak_rss_kb"] / rss[f"short/{mode}"]["peak_rss_kb"]
              for mode in ("whole", "center")}
    frame_mb = 1920 * 1080 * 3 / 2**20
    result = {
        "presets": list(presets), "clip": f"{clip_seconds:g} s 854x480 30 fps H.264 + AAC 44.1 kHz mono tone",
        "setup_s": setup_s, "repeats": repeats, "throughput": throughput,
        "rss": rss, "long_seconds": long_seconds, "short_seconds": short_seconds, "hd_fps": hd_fps,
        "rss_long_over_short": ratios,
        "decoded_1080p_frames_would_take_mb": {"long": frame_mb * long_seconds * hd_fps,
                                               "short": frame_mb * short_seconds * hd_fps},
        "note": "clips are copies of one file. Peak RSS is ru_maxrss of a child process: 'whole' decodes "
                "every frame (tiny media settings, 1 s chunks spanning the file), so its audio buffers "
                "(waveform, spectrogram) grow with the file; 'center' takes the tiny preset's 4 s clip "
                "from the middle of the file",
    }
    if not quiet:
        print_table(f"prepare: {num_clips} clips of {result['clip']} (median of {repeats})",
                    ["preset", "window", "workers", "ms/clip", "clips/s", "best clips/s"], rows)
        print_table(f"decode peak RSS, 1920x1080 {hd_fps} fps H.264 + AAC, in a child process (RSS after imports "
                    f"{rss['short/whole']['rss_before_kb'] / 1024:.0f} MB)",
                    ["file", "what is decoded", "decode s", "peak RSS MB", "decode adds MB", "output MB"],
                    [[f"{secs:g} s", "whole file" if mode == "whole" else "4 s from the middle",
                      rss[f"{name}/{mode}"]["decode_s"], rss[f"{name}/{mode}"]["peak_rss_mb"],
                      rss[f"{name}/{mode}"]["decode_increment_mb"], rss[f"{name}/{mode}"]["output_mb"]]
                     for mode in ("whole", "center") for name, secs in (("long", long_seconds), ("short", short_seconds))])
        print(f"  peak RSS {long_seconds:g} s / {short_seconds:g} s file: whole {ratios['whole']:.2f}, "
              f"4 s window {ratios['center']:.2f}; keeping the decoded 1080p frames of the {long_seconds:g} s file "
              f"would take {result['decoded_1080p_frames_would_take_mb']['long'] / 1024:.1f} GB")
    return result


# ------------------------------------------------------------------------------------------------
# 6. lora (needs the `hf` extra)


def bench_lora(batch: int = 8, preset: str = "small", n_layer: int = 12, n_embd: int = 768, n_head: int = 12,
               vocab: int = 50257, repeats: int = 3, warmup: int = 1, lora_r: int = 8, quiet: bool = False) -> dict:
    """A GPT-2-sized text backbone (random weights, built in memory) on `preset` media: frozen LM +
    LoRA (r=8 on c_attn) against full fine-tuning. Parameters (trainable / total) and step time
    (forward + backward + AdamW over the trainable parameters), side by side."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from mirasol.model.backbones import LMDecoder
    from mirasol.pretrained import apply_freeze_and_lora, parameter_counts

    variants, meta = {}, {}
    for name in ("full", "frozen+lora"):
        torch.manual_seed(0)
        cfg = MirasolConfig.preset(preset, text_backbone="<in memory>", vocab_size=vocab + 2, pad_token_id=vocab,
                                   sep_token_id=vocab + 1, bos_token_id=vocab - 1, eos_token_id=vocab - 1)
        lm = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_layer=n_layer, n_embd=n_embd, n_head=n_head))
        model = Mirasol(cfg, text_decoder=LMDecoder(cfg, lm)).train()
        if name != "full":
            apply_freeze_and_lora(model, ["text_backbone"], {"r": lora_r, "alpha": 2 * lora_r, "targets": ["c_attn"]})
        trainable, total = parameter_counts(model)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        data = random_batch(cfg, batch)
        data["input_ids"] = data["input_ids"] % vocab
        variants[name] = (lambda m=model, o=optimizer, b=data: _train_step(m, o, b))
        meta[name] = {"trainable": trainable, "total": total}
    times = measure(variants, repeats, warmup)
    rows = []
    for name, t in times.items():
        meta[name].update(t)
        rows.append([name, meta[name]["total"] / 1e6, meta[name]["trainable"] / 1e6, 1000 * t["median_s"],
                     1000 * t["min_s"]])
    if not quiet:
        print_table(f"lora: {preset} media + GPT-2-sized decoder ({n_layer} x {n_embd}, random weights), batch {batch}, "
                    f"median of {repeats}", ["variant", "total M", "trainable M", "median ms", "min ms"], rows)
    return {"preset": preset, "batch": batch, "n_layer": n_layer, "n_embd": n_embd, "lora_r": lora_r,
            "repeats": repeats, "results": meta}


# ------------------------------------------------------------------------------------------------
# 6. uniform: the chunks of a long file sampled whole


def bench_uniform(seconds: float = 180.0, size: tuple[int, int] = (1920, 1080), fps: int = 24, gop_s: float = 2.0,
                  presets=("tiny", "base", "mirasol3b"), root: Path | None = None, quiet: bool = False) -> dict:
    """clip_window=uniform on a long 1080p file: time, frames decoded and peak RSS of sampling each
    preset's chunks over the whole file, against decoding every frame, each in a fresh child process."""
    from mirasol.media.writer import write_video

    root = root or work_dir()
    path = root / "media" / f"{size[1]}p_{seconds:g}s_{fps}fps_gop{gop_s:g}s.mp4"
    began = time.perf_counter()
    if not path.exists():  # a keyframe every gop_s seconds, as streaming encoders make them
        path.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(int(seconds * 44100)) / 44100
        tmp = path.with_name(path.stem + ".part.mp4")
        write_video(tmp, _moving_frames(seconds, fps, size[1], size[0]), fps,
                    (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 44100, crf=35, gop=round(gop_s * fps))
        tmp.replace(path)
    setup_s = time.perf_counter() - began
    total = round(seconds * fps)
    runs = {"whole": decode_peak_rss(path, seconds, "whole")}
    runs.update({p: decode_peak_rss(path, seconds, f"uniform:{p}") for p in presets})
    for r in runs.values():
        r["decoded_share"] = r["frames_decoded"] / total
    result = {"file": f"{seconds:g} s {size[0]}x{size[1]} {fps} fps H.264 (keyframe every {gop_s:g} s) + AAC",
              "frames_in_file": total, "setup_s": setup_s, "runs": runs}
    if not quiet:
        rows = []
        for name, r in runs.items():
            what = "every frame (1 s chunks over the file)" if name == "whole" else \
                f"{name}: {r['frames']} samples over {r['covers_s']:.0f} s"
            rows.append([what, r["frames_decoded"], f"{100 * r['decoded_share']:.1f}%", r["decode_s"],
                         r["peak_rss_mb"], r["decode_increment_mb"]])
        print_table(f"clip_window=uniform on {result['file']}, each in a fresh process",
                    ["decoded", "frames decoded", "of file", "decode s", "peak RSS MB", "decode adds MB"], rows)
    return result


# ------------------------------------------------------------------------------------------------
# 7. store

REAL_INPUTS = ("example3.mp4", "big_buck_bunny_432_433.webm", "no_duration.webm", "flipping_a_pancake.mkv")
# candidate -> (store format, encoder keyword arguments); gop None = one key frame per chunk
STORE_CANDIDATES = {
    "h264 crf18 444 gop=chunk": ("h264", dict(crf=18, pix_fmt="yuv444p")),
    "h264 crf18 444 gop=clip": ("h264", dict(crf=18, pix_fmt="yuv444p", gop=0)),
    "h264 crf18 444 intra": ("h264", dict(crf=18, pix_fmt="yuv444p", gop=1)),
    "h264 crf18 420 gop=chunk": ("h264", dict(crf=18, pix_fmt="yuv420p")),
    "h264 crf23 444 gop=chunk": ("h264", dict(crf=23, pix_fmt="yuv444p")),
    "jpeg q90 420": ("jpeg", dict(quality=90, subsampling=2)),
    "jpeg q95 444": ("jpeg", dict(quality=95, subsampling=0)),
}


def real_media_dir() -> Path | None:
    """The real sample videos (MIRASOL_MEDIA_DIR, else the shared samples folder), if present."""
    for path in (os.environ.get("MIRASOL_MEDIA_DIR"), "/work/shared/samples/media"):
        if path and all((Path(path) / name).exists() for name in REAL_INPUTS):
            return Path(path)
    return None


def _codec_rows(presets, inputs: list[Path], candidates: dict, repeats: int) -> tuple[dict, list]:
    from mirasol.data import codecs
    from mirasol.data.cache import decode_clip

    results, rows = {}, []
    for preset in presets:
        cfg = MirasolConfig.preset(preset)
        for path in inputs:
            video, audio, info = decode_clip(str(path), cfg, None, None)
            raw_v, raw_a = video.nbytes, audio.nbytes
            real = min(cfg.num_frames, max(1, int(round(info["valid_seconds"] * cfg.fps))))  # frames not padding
            variants, encoded = {"raw": lambda: np.array(np.frombuffer(video.tobytes(), np.uint8))}, {}
            for name, (fmt, kwargs) in candidates.items():
                kwargs = dict(kwargs)
                if fmt == "h264":
                    kwargs["gop"] = kwargs.get("gop") if kwargs.get("gop") is not None else cfg.frames_per_chunk
                    kwargs["gop"] = kwargs["gop"] or cfg.num_frames
                encoder = codecs.encode_h264 if fmt == "h264" else codecs.encode_jpeg
                began = time.perf_counter()
                data = encoder(video, **kwargs)
                encoded[name] = (fmt, data, time.perf_counter() - began)
                variants[name] = (lambda f=fmt, d=data: codecs.decode(d, f, video.shape))
            times = measure(variants, repeats, warmup=1)
            for name, t in times.items():
                if name == "raw":
                    size_v, real_v, quality, worst, enc_s = raw_v, raw_v, float("inf"), float("inf"), 0.0
                else:
                    fmt, data, enc_s = encoded[name]
                    decoded = codecs.decode(data, fmt, video.shape)
                    sizes = [len(p) for p in codecs._unpack(data)]
                    size_v = len(data)
                    real_v = sum(sizes[:real]) / real * cfg.num_frames  # as if every frame were real
                    quality = codecs.psnr(video, decoded)
                    worst = min(codecs.psnr(a, b) for a, b in zip(video[:real], decoded[:real]))
                r = {"preset": preset, "input": path.name, "candidate": name, "video_bytes": size_v,
                     "audio_bytes": raw_a, "raw_bytes": raw_v + raw_a, "ratio": (raw_v + raw_a) / (size_v + raw_a),
                     "ratio_video_only": raw_v / size_v, "real_frames": real, "frames": cfg.num_frames,
                     "ratio_if_all_real": (raw_v + raw_a) / (real_v + raw_a), "psnr_db": quality,
                     "min_frame_psnr_db": worst, "decode_ms": 1000 * t["median_s"], "encode_ms": 1000 * enc_s,
                     "decode": t}
                results[f"{preset}/{path.name}/{name}"] = r
                rows.append([preset, f"{path.name[:18]} {real}/{cfg.num_frames}", name,
                             (size_v + raw_a) / 1024, r["ratio"], r["ratio_if_all_real"], quality, worst,
                             r["decode_ms"], r["encode_ms"]])
    return results, rows


def _store_manifest(inputs: list[Path], root: Path, copies: int, questions: int = 1) -> Path:
    """A manifest of `copies` links to each input (distinct cache keys), `questions` rows per clip."""
    media = root / "real"
    media.mkdir(parents=True, exist_ok=True)
    lines = []
    for c in range(copies):
        for path in inputs:
            link = media / f"{c}_{path.name}"
            if not link.exists():
                link.symlink_to(path)
            for q in range(questions):
                lines.append({"id": f"{c}_{path.stem}_{q}", "video": str(link), "task": "qa",
                              "question": f"what is in clip {q}?", "answer": path.stem.split("_")[0]})
    manifest = root / f"real_{copies}x{questions}.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return manifest


def _loader_rate(cache_dir: Path, cfg: MirasolConfig, manifest: Path, workers: int, samples: int) -> dict:
    """Samples/s of DataLoader(ClipDataset) with `workers` processes, after its first batch."""
    from mirasol.data.cache import ClipCache
    from mirasol.data.dataset import ClipDataset, collate
    from mirasol.data.tokenizer import MirasolTokenizer, tokenizer_texts
    from mirasol.datasets.manifest import read_manifest

    rows = read_manifest(manifest)
    tokenizer = MirasolTokenizer.train(tokenizer_texts(rows), vocab_size=300)
    dataset = ClipDataset(rows, ClipCache(cache_dir, cfg), tokenizer, 32)
    batch = 2
    order = [i % len(dataset) for i in range(samples + batch * max(1, workers))]
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=[order[i:i + batch] for i in range(0, len(order), batch)], num_workers=workers,
        collate_fn=lambda items: collate(items, tokenizer.pad_id), prefetch_factor=2 if workers else None)
    it = iter(loader)
    for _ in range(max(1, workers)):  # each worker's first batch: start-up, imports
        next(it)
    began = time.perf_counter()
    n = sum(b["index"].numel() for b in it)
    elapsed = time.perf_counter() - began
    return {"samples": n, "seconds": elapsed, "samples_per_s": n / elapsed}


def bench_store(presets=("base", "mirasol3b"), candidates: dict | None = None, repeats: int = 3,
                prepare_presets=("base", "mirasol3b"), prepare_stores=("raw", "h264", "none"), workers=(1, 2),
                copies: int = 2, loader_presets=("small", "base"), loader_stores=("raw", "h264", "none"),
                loader_samples: int = 16, step_preset: str | None = "base", root: Path | None = None,
                media_dir: Path | None = None, quiet: bool = False) -> dict:
    """The clip store on real videos: (1) per candidate encoding, bytes per clip against raw
    (video + float16 audio), PSNR against the raw uint8 frames, decode and encode ms per clip in
    one thread; (2) `prepare` clips/s per store format with 1 and 2 workers; (3) loader samples/s
    per store format (none = decode on the fly) with 1 and 2 DataLoader workers; (4) the training
    step of `step_preset` at batch 1 beside them."""
    from mirasol.data.cache import prepare

    media_dir = media_dir or real_media_dir()
    if media_dir is None:
        raise ValueError("the real sample videos are not found; set MIRASOL_MEDIA_DIR to a folder holding "
                         + ", ".join(REAL_INPUTS))
    inputs = [media_dir / name for name in REAL_INPUTS]
    candidates = STORE_CANDIDATES if candidates is None else candidates
    root = root or work_dir() / "store"
    root.mkdir(parents=True, exist_ok=True)
    result: dict = {"inputs": [p.name for p in inputs], "repeats": repeats}

    codec_results, rows = _codec_rows(presets, inputs, candidates, repeats)
    result["codecs"] = codec_results
    if not quiet:
        print_table(f"store: encodings of real clips (decode/encode in one thread, median of {repeats}); KB and "
                    "ratios count video + float16 audio; 'if all real': as if the clip had no padded frames",
                    ["preset", "input real/frames", "candidate", "KB/clip", "raw/this", "if all real", "PSNR dB",
                     "min frame dB", "decode ms", "encode ms"], rows)

    manifest = _store_manifest(inputs, root, copies)
    clips = copies * len(inputs)
    result["prepare"], rows, caches = {}, [], {}
    for preset in dict.fromkeys(tuple(prepare_presets) + tuple(loader_presets)):
        cfg = MirasolConfig.preset(preset)
        for store in dict.fromkeys(tuple(prepare_stores) + tuple(loader_stores)):
            for w in workers if preset in prepare_presets and store in prepare_stores else (workers[-1],):
                folder = root / f"{preset}-{store}-w{w}"
                shutil.rmtree(folder, ignore_errors=True)
                began = time.perf_counter()
                report = prepare([manifest], folder, cfg, workers=w, progress=False, store=store)
                seconds = time.perf_counter() - began
                caches[(preset, store)] = folder
                if report["ok"] != clips:
                    raise RuntimeError(f"prepare cached {report['ok']} of {clips} clips: {report['skipped'][:1]}")
                if preset in prepare_presets and store in prepare_stores:
                    size = sum(f.stat().st_size for f in folder.iterdir() if f.name in ("video.u8", "video.bin",
                                                                                          "audio.f16"))
                    r = {"preset": preset, "store": store, "workers": w, "clips": clips, "seconds": seconds,
                         "clips_per_s": clips / seconds, "bytes_per_clip": size / clips}
                    result["prepare"][f"{preset}/{store}/w{w}"] = r
                    rows.append([preset, store, w, clips, r["clips_per_s"], size / clips / 2**20])
    if not quiet:
        print_table(f"store: prepare of {clips} real clips ({copies} copies of each input; one run each)",
                    ["preset", "store", "workers", "clips", "clips/s", "MB/clip on disk"], rows)

    loader_manifest = _store_manifest(inputs, root, copies)
    result["loader"], rows = {}, []
    for preset in loader_presets:
        cfg = MirasolConfig.preset(preset)
        for store in loader_stores:
            for w in workers:
                r = _loader_rate(caches[(preset, store)], cfg, loader_manifest, w, loader_samples)
                result["loader"][f"{preset}/{store}/w{w}"] = {"preset": preset, "store": store, "workers": w, **r}
                rows.append([preset, store, w, r["samples"], r["samples_per_s"], 1000 * w / r["samples_per_s"]])
    if not quiet:
        print_table("store: DataLoader(ClipDataset) samples/s after the first batch (batch 2)",
                    ["preset", "store", "workers", "samples", "samples/s", "ms/sample/worker"], rows)

    if step_preset:
        step = bench_step(batch_sizes=(1,), combiners=("transformer",), preset=step_preset, repeats=1, warmup=1,
                          questions_per_clip=(1,), quiet=True)
        ms = 1000 * step["results"]["transformer/b1/k1"]["median_s"]
        result["step"] = {"preset": step_preset, "batch": 1, "ms": ms, "device": "cpu", "detail": step}
        if not quiet:
            print(f"\n{step_preset} training step, batch 1, transformer combiner, CPU: {ms:.0f} ms "
                  "(one timed step after one warm-up; GPU not measured here)")
    return result


# ------------------------------------------------------------------------------------------------
# 8. memory

_MEMORY_CHILD = r"""
import json, sys
import torch
from mirasol import Mirasol, MirasolConfig
from mirasol.bench import _train_step, random_batch

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
preset, batch, checkpointing, text_len = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
torch.manual_seed(0)
cfg = MirasolConfig.preset(preset)
# warm-up at batch 1: loads the kernels' code and thread pools, which the step must not be charged for
model = Mirasol(cfg).train()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
_train_step(model, optimizer, random_batch(cfg, 1, text_len, prompt_len=text_len // 2))
del model, optimizer
start = rss("VmRSS:")
model = Mirasol(cfg).train()
model.set_activation_checkpointing(checkpointing)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
data = random_batch(cfg, batch, text_len, prompt_len=text_len // 2)
_train_step(model, optimizer, data)  # the first step creates the AdamW states
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
_train_step(model, optimizer, data)
print(json.dumps({"start": start, "peak": rss("VmHWM:"), "after": rss("VmRSS:")}))
"""


def measured_cpu_peak(preset: str, batch: int, checkpointing: bool, text_len: int = 24) -> dict:
    """Peak RSS that a training step adds, measured in a fresh process: RSS after the imports,
    then model + AdamW + one step (which creates the optimizer states); the kernel's peak-RSS
    counter (VmHWM) is reset (/proc/self/clear_refs) and a second step is run; its VmHWM minus
    the RSS after imports is the step's peak: weights, gradients, optimizer states, activations
    and allocator slack. A warm-up step at batch 1 (model deleted) comes first, so that loading
    kernel code is not charged. glibc's malloc is told to give every block over 64 KiB back to the
    system when freed (fixed mmap threshold), so that RSS follows the live tensors. Linux only."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, preset, str(batch), "1" if checkpointing else "0",
                          str(text_len)], check=True, capture_output=True, text=True, env=env).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return {"peak_bytes": r["peak"] - r["start"], "after_bytes": r["after"] - r["start"]}


def bench_memory(presets=("base", "mirasol3b"), gpus=(1, 8, 64), gpu_gib: float = 80.0, batch_per_gpu=None,
                 text_len: int = 32, check=(("tiny", 32), ("small", 4)), quiet: bool = False) -> dict:
    """The memory plan per GPU (mirasol.cost.memory_plan: bf16, AdamW) for each preset, strategy,
    GPU count and activation checkpointing, with the largest batch per GPU that fits in gpu_gib;
    then the plan checked against the measured peak of a CPU step (fp32) at small sizes."""
    from mirasol.cost import GIB, max_batch, memory_plan, parameter_counts

    batch_per_gpu = batch_per_gpu or {"base": 8, "mirasol3b": 1}
    plans, rows = [], []
    for preset in presets:
        cfg = MirasolConfig.preset(preset)
        counts = parameter_counts(cfg)
        b = batch_per_gpu.get(preset, 1) if isinstance(batch_per_gpu, dict) else batch_per_gpu
        for strategy in ("ddp", "fsdp"):
            for n in gpus:
                for ac in (False, True):
                    plan = memory_plan(cfg, strategy, n, b, checkpointing=ac, bf16=True, text_len=text_len,
                                       counts=counts)
                    fit = max_batch(cfg, gpu_gib * GIB, strategy=strategy, gpus=n, checkpointing=ac, bf16=True,
                                    text_len=text_len)
                    plans.append({"preset": preset, "parameters": counts["total"], "strategy": strategy, "gpus": n,
                                  "activation_checkpointing": ac, **plan.as_dict(), "max_batch_per_gpu": fit})
                    rows.append([preset, strategy, n, "yes" if ac else "no", b] +
                                [getattr(plan, k) / GIB for k in ("weights", "gradients", "optimizer", "gathered",
                                                                  "activations")] +
                                [plan.total / GIB, "yes" if plan.total <= gpu_gib * GIB else "NO", fit])
    checks, check_rows = [], []
    for preset, b in check:
        cfg = MirasolConfig.preset(preset)
        for ac in (False, True):
            plan = memory_plan(cfg, "ddp", 1, b, checkpointing=ac, bf16=False, text_len=24)
            seen = measured_cpu_peak(preset, b, ac)
            checks.append({"preset": preset, "batch": b, "activation_checkpointing": ac, "estimate": plan.as_dict(),
                           **seen, "measured_over_estimate": seen["peak_bytes"] / plan.total})
            check_rows.append([preset, b, "yes" if ac else "no", plan.activations / 2**20,
                               (plan.total - plan.activations) / 2**20, plan.total / 2**20,
                               seen["peak_bytes"] / 2**20, seen["peak_bytes"] / plan.total])
    result = {"gpu_gib": gpu_gib, "text_len": text_len, "precision": "bf16 (plan), fp32 (CPU check)",
              "plans": plans, "cpu_check": checks,
              "note": "plan: fp32 master weights, gradients and AdamW states + activations kept for the backward "
                      "(mirasol.cost); CPU check: peak RSS of a second training step in a fresh process minus the "
                      "RSS after imports (VmHWM reset through /proc/self/clear_refs)"}
    if not quiet:
        print_table(f"memory plan per GPU (GiB), bf16 autocast, AdamW, {text_len} text tokens per row, "
                    f"{gpu_gib:g} GiB GPUs",
                    ["preset", "strategy", "GPUs", "act. ckpt", "batch/GPU", "weights", "grads", "AdamW",
                     "gathered", "activations", "total", "fits", "max batch"], rows)
        print_table("plan vs measured peak of a CPU training step (fp32, one process, MiB)",
                    ["preset", "batch", "act. ckpt", "est. activations", "est. states", "est. total",
                     "measured peak", "measured / est."], check_rows)
    return result


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

    code = ("import json, sys; from mirasol.bench import long_case; "
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
        results[name] = BENCHMARKS[name](**(step_options or {}) if name == "step" else {})
        results[name].update(wall_s=time.perf_counter() - began, load_average_before=load, load_average_after=_load())
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2))
        print(f"\nwrote {out}")
    return results


def cli_bench(args) -> int:
    options = {}
    if args.preset:
        options["preset"] = args.preset
    if args.batch:
        options["batch_sizes"] = tuple(int(b) for b in args.batch.split(","))
    if args.combiner:
        options["combiners"] = tuple(args.combiner.split(","))
    if args.questions_per_clip:
        options["questions_per_clip"] = tuple(int(k) for k in args.questions_per_clip.split(","))
    if args.precision:
        options["precision"] = args.precision
    if options and args.what not in ("step", "all"):
        raise UsageError("--preset/--batch/--combiner/--questions-per-clip/--precision apply to `bench step` only")
    run(args.what, args.out, options)
    return 0
