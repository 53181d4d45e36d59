"""The per-GPU memory plan, checked against the measured peak of training steps on this machine's
device (the CPU at small sizes; on a GPU, `base` and `mirasol3b` under fsdp)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from mirasol.config import MirasolConfig
from mirasol.perf.common import print_table


# ------------------------------------------------------------------------------------------------
# 8. memory

_MEMORY_CHILD = r"""
import json, sys
import torch
from mirasol import Mirasol, MirasolConfig
from mirasol.perf import _train_step, random_batch

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
preset, batch, checkpointing, text_len, strategy = (sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1",
                                                    int(sys.argv[4]), sys.argv[5])
cuda = torch.cuda.is_available()
device = torch.device("cuda" if cuda else "cpu")

def build():
    torch.manual_seed(0)
    cfg = MirasolConfig.preset(preset)
    with device:
        model = Mirasol(cfg).train()
    model.set_activation_checkpointing(checkpointing)
    if strategy == "fsdp":  # one process: a group of one, as `mirasol train` makes without torchrun
        from mirasol.train.distributed import setup_distributed, shard_model
        setup_distributed("fsdp")
        shard_model(model, device, bf16=cuda)
    return cfg, model, torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)

if not cuda:  # warm-up at batch 1: loads the kernels' code and thread pools, which the step must not be charged for
    cfg, model, optimizer = build()
    _train_step(model, optimizer, random_batch(cfg, 1, text_len, prompt_len=text_len // 2))
    del model, optimizer
    start = rss("VmRSS:")
else:
    start = torch.cuda.memory_allocated()
cfg, model, optimizer = build()
data = {k: v.to(device) for k, v in random_batch(cfg, batch, text_len, prompt_len=text_len // 2).items()}
_train_step(model, optimizer, data, bf16=cuda)  # the first step creates the AdamW states
if cuda:
    torch.cuda.reset_peak_memory_stats()
else:
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
_train_step(model, optimizer, data, bf16=cuda)
if cuda:
    print(json.dumps({"start": start, "peak": torch.cuda.max_memory_allocated(), "after": torch.cuda.memory_allocated(),
                      "device": torch.cuda.get_device_name()}))
else:
    print(json.dumps({"start": start, "peak": rss("VmHWM:"), "after": rss("VmRSS:"), "device": "cpu"}))
"""


def measured_peak(preset: str, batch: int, checkpointing: bool, strategy: str = "ddp", text_len: int = 24) -> dict:
    """Peak memory that a training step adds, measured in a fresh process on its device: the second
    of two steps of model + AdamW (the first creates the optimizer states), one process; `fsdp`
    shards the model over a group of one, as `mirasol train` does without torchrun.
    On a GPU: bf16 autocast, and `torch.cuda.max_memory_allocated` during the second step minus
    what was allocated before the model was built.
    On the CPU: fp32, and the kernel's peak-RSS counter (VmHWM), reset through /proc/self/clear_refs
    before the second step, minus the RSS after imports and a warm-up step at batch 1 (model
    deleted), so that loading kernel code is not charged. glibc's malloc is told to give every
    block over 64 KiB back to the system when freed (fixed mmap threshold), so that RSS follows the
    live tensors. Linux only."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"}
    proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, preset, str(batch), "1" if checkpointing else "0",
                           str(text_len), strategy], capture_output=True, text=True, env=env)
    if proc.returncode != 0:  # e.g. out of memory on the GPU: a row of the table, not the end of the benchmark
        lines = proc.stderr.strip().splitlines() or ["exit code %d" % proc.returncode]
        return {"error": lines[-1][-300:]}
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"peak_bytes": r["peak"] - r["start"], "after_bytes": r["after"] - r["start"], "device": r["device"]}


def default_checks(gpu_bytes: float | None) -> list[tuple]:
    """(preset, batch, strategy, activation checkpointing) measured against the plan. On the CPU:
    small sizes in fp32. On a GPU: `base` and `mirasol3b` under fsdp with
    activation checkpointing at the largest batch the plan fits in 90 % of the device."""
    if gpu_bytes is None:
        return [("tiny", 32, "ddp", False), ("tiny", 32, "ddp", True), ("tiny", 32, "fsdp", True),
                ("small", 4, "ddp", False), ("small", 4, "ddp", True)]
    from mirasol.cost import max_batch

    checks = []
    for preset in ("base", "mirasol3b"):
        b = max_batch(MirasolConfig.preset(preset), 0.9 * gpu_bytes, strategy="fsdp", gpus=1, checkpointing=True,
                      bf16=True, text_len=24)
        if b:
            checks.append((preset, b, "fsdp", True))
    return checks


def bench_memory(presets=("base", "mirasol3b"), gpus=(1, 8, 64), gpu_gib: float = 80.0, batch_per_gpu=None,
                 text_len: int = 32, check=None, quiet: bool = False) -> dict:
    """The memory plan per GPU (mirasol.cost.memory_plan: bf16, AdamW) for each preset, strategy,
    GPU count and activation checkpointing, with the largest batch per GPU that fits in gpu_gib;
    then the plan checked against the measured peak of steps on this machine's device
    (`default_checks`; `check`: (preset, batch, strategy, activation checkpointing) tuples)."""
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
    cuda = torch.cuda.is_available()
    if check is None:
        check = default_checks(torch.cuda.get_device_properties(0).total_memory if cuda else None)
    checks, check_rows = [], []
    for preset, b, strategy, ac in check:
        cfg = MirasolConfig.preset(preset)
        plan = memory_plan(cfg, strategy, 1, b, checkpointing=ac, bf16=cuda, text_len=24)
        seen = measured_peak(preset, b, ac, strategy)
        ratio = seen["peak_bytes"] / plan.total if "peak_bytes" in seen else None
        checks.append({"preset": preset, "batch": b, "strategy": strategy, "activation_checkpointing": ac,
                       "estimate": plan.as_dict(), **seen, "measured_over_estimate": ratio})
        check_rows.append([preset, b, strategy, "yes" if ac else "no", plan.activations / 2**20,
                           (plan.total - plan.activations) / 2**20, plan.total / 2**20,
                           seen["peak_bytes"] / 2**20 if ratio else seen["error"], ratio if ratio else "-"])
    result = {"gpu_gib": gpu_gib, "text_len": text_len,
              "precision": "bf16 (plan), " + ("bf16 (GPU check)" if cuda else "fp32 (CPU check)"),
              "plans": plans, "check": checks, "check_device": "cuda" if cuda else "cpu",
              "note": "plan: fp32 master weights, gradients and AdamW states + activations kept for the backward "
                      "(mirasol.cost); check: the peak of a second training step in a fresh process, "
                      "torch.cuda.max_memory_allocated on a GPU, else peak RSS (VmHWM) minus the RSS after imports"}
    if not quiet:
        print_table(f"memory plan per GPU (GiB), bf16 autocast, AdamW, {text_len} text tokens per row, "
                    f"{gpu_gib:g} GiB GPUs",
                    ["preset", "strategy", "GPUs", "act. ckpt", "batch/GPU", "weights", "grads", "AdamW",
                     "gathered", "activations", "total", "fits", "max batch"], rows)
        where = "GPU training step (bf16" if cuda else "CPU training step (fp32"
        print_table(f"plan vs measured peak of a {where}, one process, MiB)",
                    ["preset", "batch", "strategy", "act. ckpt", "est. activations", "est. states", "est. total",
                     "measured peak", "measured / est."], check_rows)
    return result
