"""The optimizer and its schedule: AdamW with weight decay on matrices only, the text decoder at its
own learning rate, linear warm-up then cosine decay (train/schedule.py)."""

from __future__ import annotations

import torch

from mirasol.run_config import TrainConfig
from mirasol.train.schedule import lr_factor


def adamw_kernel(device: torch.device) -> dict:
    """AdamW's implementation: torch's fused kernel (all parameters in one call) on CUDA and on the
    CPU, where it is several times faster than the per-parameter loop (benchmarks/step-profile.md);
    it rounds differently from that loop, by about 1e-6 after a few steps (benchmarks/adamw_cpu.py)."""
    return {"fused": True} if device.type in ("cuda", "cpu") else {}


def param_groups(model: torch.nn.Module, weight_decay: float, lr: float, text_lr_scale: float = 1.0):
    """AdamW groups: weight decay on matrices only; the text decoder at lr x text_lr_scale."""
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:  # frozen backbone weights
            continue
        decay = p.dim() >= 2 and "embed" not in name and "pos" not in name
        scale = text_lr_scale if name.startswith("text_decoder.") else 1.0
        groups.setdefault((decay, scale), []).append(p)
    # Decayed groups first, so that with scale 1 the groups (and checkpoints) are as they always were.
    return [{"params": params, "weight_decay": weight_decay if decay else 0.0, "lr": lr * scale}
            for (decay, scale), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))]


def make_optimizer(model: torch.nn.Module, tc: TrainConfig, device: torch.device):
    """(AdamW, its LambdaLR schedule) for the model's trainable parameters (after any sharding)."""
    optimizer = torch.optim.AdamW(param_groups(model, tc.weight_decay, tc.lr, tc.text_lr_scale), lr=tc.lr,
                                  betas=tc.betas, **adamw_kernel(device))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, tc.warmup_steps, tc.max_steps, tc.min_lr_ratio))
    return optimizer, scheduler
