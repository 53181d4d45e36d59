"""The per-GPU memory plan, checked against measured CPU peaks."""

from __future__ import annotations

import json
import os
import subprocess
import sys


from mirasol.config import MirasolConfig
from mirasol.bench.common import print_table


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
