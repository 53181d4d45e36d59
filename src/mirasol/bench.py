"""Performance benchmarks: `mirasol bench [WHAT] [--out FILE.json]`.

Each benchmark measures the things it compares side by side in one process (warm-up first, then
several repeats taken round-robin over the variants, so that a change in background load hits
every variant alike; the median is reported), prints a small table and returns a dict. The thread
count is left at torch's default and reported with the torch version.

    step       forward + backward + AdamW step of the tiny preset, batch 8 and 32, both combiners,
               one question per clip vs 4 questions sharing each clip's encoding
    chunks     encode_media cost vs number of chunks T, chunked model vs one unchunked transformer
    generate   greedy decoding of 32 tokens with and without the KV cache (and: same tokens?)
    data       data-loader time per batch from the clip cache vs the training step on that batch
    prepare    `prepare` throughput on 10 s 480p clips (1 and 2 workers); peak RSS of decoding
               a long vs a short 1080p file (bounded memory)
    long       64 to 1024 frames of the small preset's media: streaming chunk by chunk (with and
               without a window), batch encode_media and one unchunked transformer; time per frame
               and peak RSS, each case in a fresh process

`all` runs step, chunks, generate and data; `prepare` writes video files and `long` takes minutes,
so they only run when named. Python: ``run("step")`` or the ``bench_*`` functions, whose keyword arguments
shrink them (the tests use that).

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


def _train_step(model: Mirasol, optimizer: torch.optim.Optimizer, batch: dict) -> None:
    out = model(batch["video"], batch["audio"], batch["input_ids"], batch["labels"], media_index=batch["media_index"])
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------------------------
# 1. step


def bench_step(batch_sizes=(8, 32), combiners=("transformer", "ttm"), preset: str = "tiny",
               repeats: int = 5, warmup: int = 2, overrides: dict | None = None, quiet: bool = False,
               questions_per_clip=(1, 4)) -> dict:
    """Forward + backward + AdamW step time per (combiner, batch size, questions per clip);
    samples (text rows) per second. Questions per clip k: the batch's rows ask about batch / k
    clips, each encoded once (`train.questions_per_clip`)."""
    torch.manual_seed(0)
    variants, meta = {}, {}
    for combiner in combiners:
        cfg = MirasolConfig.preset(preset, combiner=combiner, **(overrides or {}))
        model = Mirasol(cfg).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for bs in batch_sizes:
            for k in questions_per_clip:
                if bs % k:
                    continue
                name = f"{combiner}/b{bs}/k{k}"
                batch = random_batch(cfg, bs, questions_per_clip=k)
                variants[name] = (lambda m=model, o=optimizer, b=batch: _train_step(m, o, b))
                meta[name] = {"combiner": combiner, "batch": bs, "questions_per_clip": k,
                              "parameters": model.num_parameters()["total"]}
    times = measure(variants, repeats, warmup)
    rows = []
    for name, t in times.items():
        meta[name].update(t)
        meta[name]["samples_per_s"] = meta[name]["batch"] / t["median_s"]
        rows.append([meta[name]["combiner"], meta[name]["batch"], meta[name]["questions_per_clip"],
                     1000 * t["median_s"], 1000 * t["min_s"], meta[name]["samples_per_s"]])
    result = {"preset": preset, "overrides": overrides or {}, "repeats": repeats, "warmup": warmup,
              "text_len": 24, "results": meta}
    if not quiet:
        print_table(f"step: {preset} preset, forward + backward + AdamW (median of {repeats})",
                    ["combiner", "batch", "questions/clip", "median ms", "min ms", "samples/s"], rows)
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
# 7. long


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
    "uniform": bench_uniform,
    "long": bench_long,
}
ALL = ("step", "chunks", "generate", "data")


def run(what: str = "all", out: str | os.PathLike | None = None) -> dict:
    """Run one benchmark (or `all` = step, chunks, generate, data); optionally write JSON to `out`."""
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
        results[name] = BENCHMARKS[name]()
        results[name].update(wall_s=time.perf_counter() - began, load_average_before=load, load_average_after=_load())
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2))
        print(f"\nwrote {out}")
    return results


def cli_bench(args) -> int:
    run(args.what, args.out)
    return 0
