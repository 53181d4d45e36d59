"""Media and data: the loader against the step, `prepare` throughput and decoding memory, uniform
sampling of a long file, and the clip store's encodings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mirasol.config import MirasolConfig
from mirasol.model.mirasol import Mirasol
from mirasol.perf.common import _train_step, measure, print_table, work_dir
from mirasol.perf.model_speed import bench_step


# ------------------------------------------------------------------------------------------------
# 4. data


def synthetic_cache(cfg: MirasolConfig, num: int = 40, root: Path | None = None) -> tuple[Path, Path]:
    """(train manifest, cache dir) of the built-in dataset with `num` clips, made once and reused."""
    from mirasol.data.cache import prepare
    from mirasol.corpora.synth import synthesize

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
    from mirasol.data.manifest import read_manifest
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
# 7. store

REAL_INPUTS = ("example3.mp4", "big_buck_bunny_432_433.webm", "no_duration.webm", "flipping_a_pancake.mkv")
# Where the real files are absent: files of the same lengths (seconds) and sizes, written here.
GENERATED_INPUTS = {"2s_854x480.mp4": (2.0, (854, 480)), "1s_1280x720.mp4": (1.0, (1280, 720)),
                    "5s_1280x720.mp4": (4.9, (1280, 720)), "10s_426x240.mp4": (10.4, (426, 240))}
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
    """The real sample videos, if present: MIRASOL_MEDIA_DIR, else the media/ folder of
    MIRASOL_SAMPLES (the samples folder the tests also read)."""
    samples = os.environ.get("MIRASOL_SAMPLES")
    for path in (os.environ.get("MIRASOL_MEDIA_DIR"), samples and os.path.join(samples, "media")):
        if path and all((Path(path) / name).exists() for name in REAL_INPUTS):
            return Path(path).resolve()  # the copies made from it live elsewhere
    return None


def store_inputs(root: Path) -> list[Path]:
    """The store benchmark's input videos: the real samples where real_media_dir() finds them, else
    H.264 + AAC files of their lengths and sizes written under root (kept for the next run)."""
    media_dir = real_media_dir()
    if media_dir is not None:
        return [media_dir / name for name in REAL_INPUTS]
    folder = root / "generated"
    folder.mkdir(parents=True, exist_ok=True)
    return [write_test_video(folder / name, seconds, size, fps=24)
            for name, (seconds, size) in GENERATED_INPUTS.items()]


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
    from mirasol.data.manifest import read_manifest

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
                inputs: list[Path] | None = None, quiet: bool = False) -> dict:
    """The clip store on videos of several sizes and lengths (`inputs`, by default store_inputs()):
    (1) per candidate encoding, bytes per clip against raw
    (video + float16 audio), PSNR against the raw uint8 frames, decode and encode ms per clip in
    one thread; (2) `prepare` clips/s per store format with 1 and 2 workers; (3) loader samples/s
    per store format (none = decode on the fly) with 1 and 2 DataLoader workers; (4) the training
    step of `step_preset` at batch 1 beside them."""
    from mirasol.data.cache import prepare

    candidates = STORE_CANDIDATES if candidates is None else candidates
    root = root or work_dir() / "store"
    root.mkdir(parents=True, exist_ok=True)
    inputs = [Path(p) for p in inputs] if inputs else store_inputs(root)
    result: dict = {"inputs": [p.name for p in inputs], "repeats": repeats}

    codec_results, rows = _codec_rows(presets, inputs, candidates, repeats)
    result["codecs"] = codec_results
    if not quiet:
        print_table(f"store: encodings of {len(inputs)} videos' clips (decode/encode in one thread, median of {repeats}); KB and "
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
        print_table(f"store: prepare of {clips} clips ({copies} copies of each input; one run each)",
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
