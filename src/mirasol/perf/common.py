"""Shared by every benchmark: environment record, round-robin timing, tables, random batches."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from mirasol.config import MirasolConfig
from mirasol.model import IGNORE_INDEX
from mirasol.model.mirasol import Mirasol


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
