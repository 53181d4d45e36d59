"""`mirasol train`: manifests -> (prepared cache) -> a trained run directory.

Everything is validated before any work: the config, the manifests, the run directory. Then:
tokenizer (trained on the training text), clip cache (decoding only clips not yet cached),
AdamW with warm-up + cosine, gradient accumulation and clipping, bf16 autocast where supported,
periodic validation, metrics.jsonl, atomic checkpoints (resumable bit-for-bit on CPU), plots.
Several processes: launch with `torchrun --nproc_per_node N -m mirasol.cli train ...`
(gloo on CPU, NCCL on GPU); each process takes its share of every global batch. `train.strategy`
ddp replicates the model, fsdp shards it (see train/distributed.py) and checkpoints it with
torch.distributed.checkpoint.
"""

from __future__ import annotations

import collections
import json
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from mirasol.config import ConfigError
from mirasol.data.cache import ClipCache, default_cache_dir, prepare, print_report, require_clips
from mirasol.data.dataset import ClipDataset, EpochBatches, collate, select_rows
from mirasol.datasets.manifest import family, normalize_answer, read_manifest
from mirasol.data.tokenizer import BackboneTokenizer, MirasolTokenizer, tokenizer_texts
from mirasol.eval.predict import predict
from mirasol.model import IGNORE_INDEX, Mirasol
from mirasol import run_dir
from mirasol.train.config import RunConfig, load_run_config
from mirasol.train.distributed import full_state_dict, setup_distributed, shard_model, unsharded_copy
from mirasol.train.schedule import lr_factor


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _sum(value: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value)
    return value


def _precision(run_cfg: RunConfig, device: torch.device) -> str:
    precision = run_cfg.train.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return precision


def _autocast(run_cfg: RunConfig, device: torch.device):
    if _precision(run_cfg, device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def adamw_kernel(device: torch.device) -> dict:
    """AdamW's implementation: torch's fused kernel (all parameters in one call) on CUDA and on the
    CPU. On the CPU it takes the tiny preset's optimizer step from ~19 ms to ~5 ms, a tenth of the
    whole step; it rounds differently from the per-parameter loop, by about 1e-6 after a few steps
    (benchmarks/adamw_cpu.py)."""
    return {"fused": True} if device.type in ("cuda", "cpu") else {}


def _param_groups(model: torch.nn.Module, weight_decay: float, lr: float, text_lr_scale: float = 1.0):
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


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def validate(model, dataset, tokenizer, stats, run_cfg, device, max_samples: int) -> dict:
    model.eval()
    n = min(len(dataset), max(max_samples, 1))
    loss_sum = tokens = correct = 0.0
    by_family: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    bs = run_cfg.train.batch_size
    for start in range(0, n, bs):
        batch = _to(collate([dataset[i] for i in range(start, min(n, start + bs))]), device)
        with _autocast(run_cfg, device):
            out = model(batch["video"], batch["audio"], batch["input_ids"], batch["labels"],
                        media_index=batch["media_index"], chunk_mask=batch["chunk_mask"])
            count = (batch["labels"][:, 1:] != IGNORE_INDEX).sum().item()
            loss_sum += out.text_loss.item() * count
            tokens += count
            samples = [dataset.samples[i] for i in batch["index"].tolist()]
            answers = predict(model, tokenizer, batch["video"], batch["audio"], batch["prompt_ids"], samples,
                              labels=stats["labels"], media_index=batch["media_index"],
                              chunk_mask=batch["chunk_mask"])
        for answer, s in zip(answers, samples):
            hit = normalize_answer(answer) == normalize_answer(s.answer)
            correct += hit
            by_family[family(s)][0] += hit
            by_family[family(s)][1] += 1
    model.train()
    return {"val_text_loss": loss_sum / max(tokens, 1), "val_accuracy": correct / n, "val_samples": n,
            "val_accuracy_by_type": {f: round(h / c, 4) for f, (h, c) in sorted(by_family.items())}}


def _check_run_dir(out: Path, resume: bool) -> None:
    has_checkpoint = run_dir.latest_checkpoint(out) is not None
    if resume and not has_checkpoint:
        raise ConfigError(f"--resume: {out} has no checkpoint to resume from")
    if not resume and out.exists() and any(out.iterdir()):
        raise ConfigError(f"run directory {out} already exists and is not empty; pass --resume to continue it "
                          "or choose another --out")


def train(run_cfg: RunConfig, train_manifest: str, val_manifest: str | None, out: str | Path,
          resume: bool = False, progress: bool = True) -> dict:
    out = Path(out)
    tc = run_cfg.train
    rank, world, device = setup_distributed(tc.strategy)
    main = rank == 0
    fsdp = tc.strategy == "fsdp"
    if tc.batch_size % (world * tc.grad_accum):
        raise ConfigError(f"config key 'train.batch_size': batch_size={tc.batch_size} is not divisible by "
                          f"processes x grad_accum = {world} x {tc.grad_accum}")
    # --- everything that can fail cheaply, before any work ---------------------------------
    if any(getattr(run_cfg.model, k) for k in ("text_backbone", "video_backbone", "audio_backbone")):
        from mirasol.pretrained import resolve_config

        run_cfg.model = resolve_config(run_cfg.model)  # vocabulary, specials, audio features from the folders
    train_samples = read_manifest(train_manifest)
    val_samples = read_manifest(val_manifest) if val_manifest else []
    _check_run_dir(out, resume)
    resume_from = run_dir.latest_checkpoint(out) if resume else None
    resumed = run_dir.load_train_state(resume_from) if resume_from else None  # a refused file stops us here
    max_len = run_cfg.data.max_text_len or run_cfg.model.max_text_len
    cache_dir = Path(run_cfg.data.cache) if run_cfg.data.cache else default_cache_dir(train_manifest, run_cfg.model,
                                                                                              run_cfg.data.store)

    # --- run directory, tokenizer, cache (rank 0 prepares, the others wait) ---------------
    _barrier()  # every process has checked the run directory before rank 0 writes into it
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            if run_cfg.model.text_backbone:  # the LM's own tokenizer
                tokenizer = BackboneTokenizer.load(run_cfg.model.text_backbone, run_cfg.model)
            elif run_cfg.data.tokenizer:
                tokenizer = MirasolTokenizer.load(run_cfg.data.tokenizer)
            else:
                tokenizer = MirasolTokenizer.train(tokenizer_texts(train_samples + val_samples),
                                                   vocab_size=run_cfg.model.vocab_size)
            if tokenizer.vocab_size > run_cfg.model.vocab_size:
                raise ConfigError(f"config key 'model.vocab_size': the tokenizer has {tokenizer.vocab_size} tokens, "
                                  f"more than model.vocab_size={run_cfg.model.vocab_size}")
            run_dir.write_run_files(out, run_cfg.to_dict(), tokenizer, run_dir.train_stats(train_samples))
        manifests = [train_manifest] + ([val_manifest] if val_manifest else [])
        report = prepare(manifests, cache_dir, run_cfg.model, workers=run_cfg.data.prepare_workers, progress=progress,
                         store=run_cfg.data.store, samples=train_samples + val_samples)
        print_report(report, cache_dir)
        require_clips(report, train_manifest, cache_dir)
    _barrier()
    tokenizer, stats = run_dir.load_tokenizer(out), run_dir.load_train_stats(out)
    cache = ClipCache(cache_dir, run_cfg.model, store=run_cfg.data.store)
    train_set = ClipDataset(train_samples, cache, tokenizer, max_len)
    val_set = ClipDataset(val_samples, cache, tokenizer, max_len) if val_samples else None

    # --- model and optimiser -------------------------------------------------------------------
    torch.manual_seed(tc.seed)
    if any(getattr(run_cfg.model, k) for k in ("text_backbone", "video_backbone", "audio_backbone")):
        from mirasol.pretrained import build_model

        model = build_model(run_cfg.model, tc.freeze, tc.lora).to(device)
    else:
        model = Mirasol(run_cfg.model).to(device)
    if main:
        trainable, total = (sum(p.numel() for p in model.parameters() if p.requires_grad),
                            sum(p.numel() for p in model.parameters()))
        print(f"parameters: {trainable:,} trainable / {total:,} total ({100 * trainable / total:.2f} %)",
              file=sys.stderr)
    model.set_activation_checkpointing(tc.activation_checkpointing)
    if fsdp:
        shard_model(model, device, bf16=_precision(run_cfg, device) == "bf16")
    optimizer = torch.optim.AdamW(_param_groups(model, tc.weight_decay, tc.lr, tc.text_lr_scale), lr=tc.lr, betas=tc.betas,
                                  **adamw_kernel(device))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, tc.warmup_steps, tc.max_steps, tc.min_lr_ratio))
    step = 0
    if resumed is not None:
        if run_dir.is_sharded(resume_from) != fsdp:
            written = "train.strategy=fsdp" if run_dir.is_sharded(resume_from) else "train.strategy=ddp"
            raise ConfigError(f"config key 'train.strategy': {resume_from} was written with {written}; resume with "
                              f"that strategy (any number of processes works for fsdp)")
        if fsdp:  # model and optimizer are in the sharded files
            run_dir.load_sharded_checkpoint(resume_from, model, optimizer)
        else:
            run_dir.load_weights(model, resume_from / "model.safetensors", device)
            optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        torch.set_rng_state(resumed["rng"])
        step = int(resumed["step"])
        if main:
            _truncate_metrics(out / "metrics.jsonl", step)
            print(f"resuming {out} from step {step}", file=sys.stderr)
    # find_unused_parameters: some parameters (mask token, gates) sit out depending on the config.
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) \
        if world > 1 and not fsdp else model
    forward = torch.compile(ddp) if tc.compile else ddp  # `model` stays uncompiled: its state dict keeps its names

    micro = tc.batch_size // world // tc.grad_accum
    batches = EpochBatches(len(train_set), tc.batch_size, tc.seed, start_batch=step, rank=rank, world=world,
                           clips=train_set.clip_ids, questions_per_clip=tc.questions_per_clip)
    loader = torch.utils.data.DataLoader(
        train_set, batch_sampler=batches, num_workers=run_cfg.data.workers,
        collate_fn=lambda items: collate(items, tokenizer.pad_id), persistent_workers=run_cfg.data.workers > 0,
        generator=torch.Generator().manual_seed(tc.seed))  # its own generator: starting it must not move the global RNG
    writer = _tensorboard(out) if main else None
    metrics = open(out / "metrics.jsonl", "a") if main else None
    bar = tqdm(total=tc.max_steps, initial=step, desc="training", unit="step", disable=not (main and progress),
               file=sys.stderr, dynamic_ncols=True)
    model.train()
    tick, seen = time.perf_counter(), 0
    summary: dict = {}
    try:
        data_iter = iter(loader)
        while step < tc.max_steps:
            batch = _to(next(data_iter), device)
            parts = [select_rows(batch, i * micro, (i + 1) * micro) for i in range(tc.grad_accum)]
            # Weigh each micro-batch's token-mean text loss by its share of the global batch's answer
            # tokens, so any split over processes and accumulation gives the one-process gradient.
            counts = [(p["labels"][:, 1:] != IGNORE_INDEX).sum() for p in parts]
            total_tokens = _sum(torch.stack(counts).sum().float()).clamp(min=1)
            logged = torch.zeros(3, device=device)
            for i, p in enumerate(parts):
                last_micro = i == len(parts) - 1
                if fsdp:  # reduce-scatter the gradients only after the last micro-batch
                    model.set_requires_gradient_sync(last_micro)
                sync = ddp.no_sync() if world > 1 and not fsdp and not last_micro else nullcontext()
                with sync, _autocast(run_cfg, device):
                    out_ = forward(p["video"], p["audio"], p["input_ids"], p["labels"], media_index=p["media_index"],
                               chunk_mask=p["chunk_mask"], return_logits=False)
                    text = out_.text_loss * counts[i] / total_tokens * world
                    latent = out_.latent_loss / tc.grad_accum
                    loss = run_cfg.model.text_loss_weight * text + run_cfg.model.latent_loss_weight * latent
                loss.backward()
                logged += torch.stack([loss.detach(), text.detach(), latent.detach()]).float()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip) if tc.grad_clip else None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            seen += tc.batch_size
            logged = _sum(logged) / world
            if main:
                bar.update(1)
                row = {"step": step, "loss": logged[0].item(), "text_loss": logged[1].item(),
                       "latent_loss": logged[2].item(), "lr": scheduler.get_last_lr()[0]}
                if grad_norm is not None:  # a DTensor under fsdp (already reduced over processes)
                    row["grad_norm"] = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
                if step % tc.log_every == 0 or step == tc.max_steps:
                    elapsed = time.perf_counter() - tick
                    row["samples_per_s"] = seen / max(elapsed, 1e-9)
                    tick, seen = time.perf_counter(), 0
                    bar.set_postfix(loss=f"{row['loss']:.3f}", text=f"{row['text_loss']:.3f}",
                                    latent=f"{row['latent_loss']:.3f}", sps=f"{row['samples_per_s']:.0f}")
                    _log(metrics, writer, row)
            evaluate_now = val_set is not None and ((tc.eval_every and step % tc.eval_every == 0) or step == tc.max_steps)
            save_now = step % tc.save_every == 0 or step == tc.max_steps
            # fsdp: every process takes part in gathering the whole model (rank 0 receives it, on the CPU)
            full = full_state_dict(model) if fsdp and (evaluate_now or (save_now and (
                tc.save_consolidated or step == tc.max_steps))) else None
            if evaluate_now and main:
                eval_model = unsharded_copy(run_cfg.model, full, device) if fsdp else model
                val = validate(eval_model, val_set, tokenizer, stats, run_cfg, device, tc.eval_samples)
                del eval_model
                _log(metrics, writer, {"step": step, **val})
                bar.write(f"step {step}: val text loss {val['val_text_loss']:.4f}, "
                          f"val accuracy {val['val_accuracy']:.3f} ({val['val_samples']} samples)")
                summary.update(val)
            if save_now:
                state = {"step": step, "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()}
                if fsdp:  # the optimizer's state is sharded with the model, in the DCP files
                    keep_full = full if (tc.save_consolidated or step == tc.max_steps) else None
                    run_dir.save_sharded_checkpoint(out, model, optimizer, run_cfg.to_dict(), state, step,
                                                    tc.keep_checkpoints, full_state=keep_full)
                elif main:
                    state["optimizer"] = optimizer.state_dict()
                    run_dir.save_checkpoint(out, model, run_cfg.to_dict(), state, step, tc.keep_checkpoints)
                _barrier()
            del full
    finally:
        bar.close()
        if metrics:
            metrics.close()
        if writer:
            writer.close()
    if main and tc.plots:
        plot_metrics(out / "metrics.jsonl", out)
    summary.update({"step": step, "run": str(out), "train_samples": len(train_set),
                    "train_skipped": train_set.skipped})
    return summary


def _truncate_metrics(path: Path, step: int) -> None:
    """A resumed run repeats the steps after its checkpoint: drop their old lines."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: metrics.jsonl and the plots are enough
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _log(metrics, writer, row: dict) -> None:
    metrics.write(json.dumps(row) + "\n")
    metrics.flush()
    if writer is not None:
        for key, value in row.items():
            if isinstance(value, dict):
                for sub, v in value.items():
                    writer.add_scalar(f"{key}/{sub}", v, row["step"])
            elif key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                writer.add_scalar(key, value, row["step"])


def plot_metrics(metrics_file: Path, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    train_rows = [r for r in rows if "loss" in r]
    val_rows = [r for r in rows if "val_text_loss" in r]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "text_loss", "latent_loss"):
        axes[0].plot([r["step"] for r in train_rows], [r[key] for r in train_rows], label=key, lw=1)
    if val_rows:
        axes[0].plot([r["step"] for r in val_rows], [r["val_text_loss"] for r in val_rows], "o-", label="val_text_loss")
        axes[1].plot([r["step"] for r in val_rows], [r["val_accuracy"] for r in val_rows], "o-", label="val_accuracy")
        axes[1].set_ylim(0, 1)
    axes[0].set_yscale("log")
    for ax, title in zip(axes, ("losses", "validation accuracy")):
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


def cli_train(args) -> int:
    # errors in the input reach `mirasol.cli.main`, which prints them as one line
    try:
        run_cfg = load_run_config(args.config, args.overrides)
        for path in [args.train] + ([args.val] if args.val else []):
            if not Path(path).exists():
                raise ConfigError(f"manifest {path} does not exist")
        summary = train(run_cfg, args.train, args.val, args.out, resume=args.resume)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    print(json.dumps(summary, indent=2))
    return 0
