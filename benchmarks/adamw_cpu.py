"""Would another AdamW implementation speed up the tiny training step on the CPU, and with what
results? torch's CPU default (per-parameter loop), foreach and the fused CPU kernel side by side,
round-robin in one process (the `mirasol bench step` way): whole training steps, then the optimizer
step alone on fixed gradients.

    python benchmarks/adamw_cpu.py [--threads N] [--repeats R]
"""

import argparse
import copy

import torch

from mirasol import Mirasol, MirasolConfig
from mirasol.perf import _train_step, measure, random_batch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = MirasolConfig.preset("tiny")
    base = Mirasol(cfg).train()
    batch = random_batch(cfg, 32, questions_per_clip=4)
    models, variants = {}, {}
    for name, kwargs in (("default", {}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        model = copy.deepcopy(base)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **kwargs)
        models[name] = model
        variants[name] = lambda m=model, o=opt: _train_step(m, o, batch)
    times = measure(variants, repeats=args.repeats, warmup=2)
    # the optimizer step alone, on fixed gradients (short calls: less exposed to background load)
    steps = {}
    for name, kwargs in (("default", {}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        model = copy.deepcopy(base)
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        steps[name] = torch.optim.AdamW(model.parameters(), lr=1e-4, **kwargs).step
    opt_times = measure(steps, repeats=5 * args.repeats, warmup=2)
    weights = {k: torch.cat([p.detach().flatten() for p in m.parameters()]) for k, m in models.items()}
    print(f"tiny preset, transformer, batch 32, 4 questions per clip, {torch.get_num_threads()} threads, "
          f"median / min of {args.repeats}")
    for name, t in times.items():
        diff = (weights[name] - weights["default"]).abs().max().item()
        print(f"  {name:8s} {1000 * t['median_s']:7.1f} ms  {1000 * t['min_s']:7.1f} ms   "
              f"max |weight - default| after {args.repeats + 2} steps: {diff:.3g}")
    print(f"AdamW step alone ({sum(p.numel() for p in base.parameters())} parameters in "
          f"{len(list(base.parameters()))} tensors), median / min of {5 * args.repeats}")
    for name, t in opt_times.items():
        print(f"  {name:8s} {1000 * t['median_s']:7.2f} ms  {1000 * t['min_s']:7.2f} ms")


if __name__ == "__main__":
    main()
