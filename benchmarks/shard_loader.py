"""Loader throughput at the `base` preset's sampling: tar shards vs the clip store vs `data.store: none`.

    python benchmarks/shard_loader.py [--clips 8] [--seconds 20] [--workers 1,2,4] [--out results.json] [--keep DIR]

Writes `--clips` videos (640x360, 25 fps H.264 + 44.1 kHz stereo AAC, `--seconds` long, by
load_clip_speed.write_clip), one question each, then on the same clips, in one run:

- shards: `mirasol shard` into 4 shards (2 clips each at the default), read by the training
  loader (data/shards.py: 4 lanes, batches of 4, one row per lane) with 1, 2 and 4 workers; the
  videos are decoded from the shard's bytes in the workers;
- the clip store as `auto` makes it at `base` (h264), after `prepare` (its time is printed too),
  read by the training Dataset through a DataLoader with the same worker counts and batches;
- `data.store: none`: the same, decoding the video files in the workers.

Each figure is clips per second from the loader's start to its 6th batch (24 clips): the start of
the workers is counted, and so is every clip they decode ahead (a DataLoader prefetches two
batches per worker: timing only the batches after the first would count clips decoded before the
clock started, flattering the map-style loaders whose workers each decode a whole batch).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_clip_speed import write_clip  # noqa: E402  (a sibling script: the same test video)

from mirasol import MirasolConfig  # noqa: E402
from mirasol.data import shards  # noqa: E402
from mirasol.data.dataset import collate, open_dataset, ready_clips  # noqa: E402
from mirasol.data.manifest import read_manifest, write_manifest  # noqa: E402
from mirasol.data.tokenizer import MirasolTokenizer, tokenizer_texts  # noqa: E402
from mirasol.run_config import DataConfig  # noqa: E402

BATCH, TIMED = 4, 6  # rows per batch, batches timed


def timed(batches) -> float:
    """Clips per second from the loader's start to its TIMED-th batch."""
    start, clips = time.perf_counter(), 0
    it = iter(batches)
    for _ in range(TIMED):
        clips += next(it)["video"].shape[0]
    return clips / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--out", default=None)
    parser.add_argument("--keep", default=None, help="folder to keep the videos, shards and stores in")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="shard_bench_"))
    cfg = MirasolConfig.preset("base")
    (root / "clips").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(args.clips):
        video = root / "clips" / f"c{i:03d}.mp4"
        if not video.exists():
            write_clip(video, seconds=args.seconds, fps=25, size=(360, 640))
        rows.append({"id": f"c{i:03d}", "video": f"clips/c{i:03d}.mp4", "question": "what moves?", "answer": "a box"})
    write_manifest(root / "train.jsonl", rows)
    samples = read_manifest(root / "train.jsonl")
    tok = MirasolTokenizer.train(tokenizer_texts(samples), vocab_size=cfg.vocab_size)
    pattern = shards.write_shards(samples, root / "shards", shard_size=max(1, args.clips // 4))["pattern"]
    cpus = os.cpu_count()
    results = {"preset": "base", "clips": args.clips, "seconds": args.seconds, "source": "640x360 25 fps h264 + aac",
               "cpus": cpus, "load": os.getloadavg()[0], "rows": []}

    def row(source: str, w: int, rate: float, **extra) -> None:
        results["rows"].append({"source": source, "workers": w, "clips_per_s": round(rate, 3), **extra})
        print(f"{source:<12} workers {w}: {rate:6.2f} clips/s", flush=True)

    for w in workers:
        loader = shards.ShardLoader(pattern, cfg, tok, cfg.max_text_len, BATCH, seed=0, workers=w, lanes=BATCH)
        row("shards", w, timed(loader))
        del loader
    for store in ("h264", "none"):
        data = DataConfig(store=store)
        cache = root / f"store-{store}"
        start = time.perf_counter()
        ready_clips([root / "train.jsonl"], cache, data, cfg, progress=False)
        prepare_s = time.perf_counter() - start
        print(f"prepare --store {store}: {prepare_s:.1f} s for {args.clips} clips", flush=True)
        dataset = open_dataset(samples, cache, data, cfg, tok)
        order = list(range(len(dataset))) * (BATCH * TIMED // len(dataset) + 1)
        for w in workers:
            loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, sampler=order, num_workers=w,
                                                 collate_fn=collate)
            row(f"store {store}", w, timed(loader), prepare_s=round(prepare_s, 1))
            del loader
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
