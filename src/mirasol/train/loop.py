"""`mirasol train`: manifests -> (prepared clip store) -> a trained run directory.

`train()` conducts; each step it takes is a function below, in the order it runs:
  1. `_check_and_prepare`: everything that can fail cheaply (config, manifests, run directory, a
     checkpoint to resume), then the tokenizer, run files and the clip store (rank 0; others wait);
  2. `_build`: the model (`Mirasol.build`: plain, or pretrained backbones with freeze / LoRA),
     sharded under fsdp, its optimizer and schedule, restored from the checkpoint when resuming;
  3. `_train_step`: one optimizer step over the global batch (accumulation, clipping, bf16 autocast);
  4. `_validate_and_save`: periodic validation (greedy answers, accuracy per family) and atomic
     checkpoints (resumable bit-for-bit on CPU), metrics.jsonl, plots at the end.
Several processes: `torchrun --nproc_per_node N -m mirasol.cli train ...` (gloo on CPU, NCCL on
GPU); each process takes its share of every global batch. `train.strategy` ddp replicates the
model, fsdp shards it (train/distributed.py) and checkpoints it with torch.distributed.checkpoint.
"""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from mirasol import run_dir
from mirasol.config import BACKBONE_KEYS, IGNORE_INDEX, ConfigError
from mirasol.data.cache import default_cache_dir
from mirasol.data.dataset import ClipDataset, EpochBatches, collate, open_dataset, ready_clips, select_rows
from mirasol.data.manifest import read_manifest
from mirasol.data.shards import ShardLoader, check_text_index, is_shards, read_rows, read_text_index, unpack
from mirasol.data.tokenizer import BackboneTokenizer, MirasolTokenizer, tokenizer_texts
from mirasol.eval.predict import answer_budget, predict
from mirasol.eval.scoring import accuracy_by_family, score_rows
from mirasol.model import Mirasol
from mirasol.run_config import RunConfig, load_run_config, resume_changes
from mirasol.train.distributed import full_state_dict, setup_distributed, shard_model, unsharded_copy
from mirasol.train.metrics import MetricsLog, plot_metrics
from mirasol.train.optim import make_optimizer


def train(run_cfg: RunConfig, train_manifest: str, val_manifest: str | None, out: str | Path,
          resume: bool = False, progress: bool = True, command: str | None = None) -> dict:
    """`command`: the command line that started this (kept in RUN/commands.jsonl for the model card)."""
    out, tc = Path(out), run_cfg.train
    rank, world, device = setup_distributed(tc.strategy)
    run = _check_and_prepare(run_cfg, train_manifest, val_manifest, out, resume, rank, world, progress)
    model, optimizer, scheduler, step = _build(run_cfg, run, device, rank == 0)
    if rank == 0:
        run_dir.record_command(out, command, train_manifest, val_manifest, resume, step)
    # find_unused_parameters: some parameters (mask token, gates) sit out depending on the config.
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) \
        if world > 1 and tc.strategy != "fsdp" else model
    forward = torch.compile(ddp) if tc.compile else ddp  # `model` stays uncompiled: its state dict keeps its names
    loader = _loader(run_cfg, run, train_manifest, step, rank, world)
    log = MetricsLog(out, resumed_step=step if run.resumed else None) if rank == 0 else None
    bar = tqdm(total=tc.max_steps, initial=step, desc="training", unit="step", disable=not (rank == 0 and progress),
               file=sys.stderr, dynamic_ncols=True)
    model.train()
    summary: dict = {}
    speed = _Speed()
    try:
        data_iter = iter(loader)
        while step < tc.max_steps:
            row = _train_step(forward, ddp, model, optimizer, scheduler, next(data_iter), run_cfg, device, world)
            step += 1
            if rank == 0:
                bar.update(1)
                _log_step(log, bar, {"step": step, **row}, tc, speed)
            summary.update(_validate_and_save(model, optimizer, scheduler, run_cfg, run, out, step, device, log, bar))
    finally:
        bar.close()
        if log is not None:
            log.close()
    if rank == 0 and tc.plots:
        plot_metrics(out / "metrics.jsonl", out)
    if run.shards is None:
        summary.update({"step": step, "run": str(out), "train_samples": len(run.train_set),
                        "train_skipped": run.train_set.skipped})
    else:  # streamed: rows are counted by the first start's text pass, skips as the lanes meet them
        skipped = run.shards.skipped_counts()
        summary.update({"step": step, "run": str(out), "train_samples": run.stats.get("num_samples"),
                        "train_skipped": sum(skipped.values()), "train_skipped_by_shard": skipped})
    return summary


def _loader(run_cfg: RunConfig, run: "_Run", source: str, step: int, rank: int, world: int):
    """This process's training batches: from a manifest, EpochBatches over the dataset; from shards,
    a ShardLoader (data/shards.py) started where the checkpoint left its lanes."""
    tc = run_cfg.train
    if is_shards(source):
        state = run.resumed.get("loader") if run.resumed else None
        if run.resumed and state is None:
            raise ConfigError(f"--train {source}: the checkpoint to resume was trained from a manifest")
        run.shards = ShardLoader(source, run_cfg.model, run.tokenizer, run_cfg.data.max_text_len or
                                 run_cfg.model.max_text_len, tc.batch_size, tc.seed, rank, world,
                                 run_cfg.data.workers, run_cfg.data.shard_lanes, state, run_cfg.data.shard_shuffle)
        return run.shards
    batches = EpochBatches(len(run.train_set), tc.batch_size, tc.seed, start_batch=step, rank=rank, world=world,
                           clips=run.train_set.clip_ids, questions_per_clip=tc.questions_per_clip)
    return torch.utils.data.DataLoader(
        run.train_set, batch_sampler=batches, num_workers=run_cfg.data.workers,
        collate_fn=lambda items: collate(items, run.tokenizer.pad_id), persistent_workers=run_cfg.data.workers > 0,
        generator=torch.Generator().manual_seed(tc.seed))  # its own generator: starting it must not move the global RNG


# --- 1. checks, tokenizer, run files, clip store ------------------------------------------------
@dataclass
class _Run:
    train_set: ClipDataset | None  # None when training from shards
    val_set: ClipDataset | None
    tokenizer: MirasolTokenizer
    stats: dict
    resume_from: Path | None
    resumed: dict | None  # the checkpoint's train_state.pt
    shards: ShardLoader | None = None  # training from shards: the loader, whose position checkpoints keep


def _check_and_prepare(run_cfg: RunConfig, train_manifest, val_manifest, out: Path, resume: bool, rank: int,
                       world: int, progress: bool) -> _Run:
    tc = run_cfg.train
    if tc.batch_size % (world * tc.grad_accum):
        raise ConfigError(f"config key 'train.batch_size': batch_size={tc.batch_size} is not divisible by "
                          f"processes x grad_accum = {world} x {tc.grad_accum}")
    if any(getattr(run_cfg.model, k) for k in BACKBONE_KEYS):
        from mirasol.model.pretrained import resolve_config

        run_cfg.model = resolve_config(run_cfg.model)  # vocabulary, specials, audio features from the folders
    shards = is_shards(train_manifest)  # streamed by the loader; rank 0 reads their text once, below
    if shards and run_cfg.data.shard_text and not resume:
        check_text_index(run_cfg.data.shard_text)
    if val_manifest and is_shards(val_manifest):  # validation reads by row: the shards unpacked once
        if rank == 0:
            unpack(val_manifest)
        _barrier()
        val_manifest = str(unpack(val_manifest))  # (written: only found)
    train_samples = [] if shards else read_manifest(train_manifest)
    val_samples = read_manifest(val_manifest) if val_manifest else []
    _check_run_dir(out, resume)
    resume_from = run_dir.latest_checkpoint(out) if resume else None
    # before any work: a model setting the weights cannot follow stops the run here (a checkpoint without
    # its config.json is not one `mirasol train` wrote: reading its train state, next, says what is wrong)
    if resume_from is not None and (resume_from / "config.json").exists():
        changes = resume_changes(load_run_config(resume_from), run_cfg, resume_from)
        if changes and rank == 0:
            print(f"resuming {resume_from.name} with changed settings: {'; '.join(changes)}")
    resumed = run_dir.load_train_state(resume_from) if resume_from else None  # a refused file stops the run here
    cache_dir = Path(run_cfg.data.cache) if run_cfg.data.cache else default_cache_dir(
        val_manifest if shards and val_manifest else train_manifest, run_cfg.model, run_cfg.data.store)
    _barrier()  # every process has checked the run directory before rank 0 writes into it
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            if shards:  # their text: from the text index if there is one, else read from every shard
                train_samples = (read_text_index(run_cfg.data.shard_text) if run_cfg.data.shard_text
                                 else read_rows(train_manifest)[0])
            tokenizer = _make_tokenizer(run_cfg, train_samples + val_samples)
            run_dir.write_run_files(out, run_cfg.to_dict(), tokenizer, run_dir.train_stats(train_samples, tokenizer))
        manifests = ([] if shards else [train_manifest]) + ([val_manifest] if val_manifest else [])
        if manifests:
            ready_clips(manifests, cache_dir, run_cfg.data, run_cfg.model,
                        samples=([] if shards else train_samples) + val_samples, progress=progress)
    _barrier()
    tokenizer, stats = run_dir.load_tokenizer(out, run_cfg.model), run_dir.load_train_stats(out)
    train_set = None if shards else open_dataset(train_samples, cache_dir, run_cfg.data, run_cfg.model, tokenizer)
    val_set = open_dataset(val_samples, cache_dir, run_cfg.data, run_cfg.model, tokenizer) if val_samples else None
    return _Run(train_set, val_set, tokenizer, stats, resume_from, resumed)


def _check_run_dir(out: Path, resume: bool) -> None:
    has_checkpoint = run_dir.latest_checkpoint(out) is not None
    if resume and not has_checkpoint:
        raise ConfigError(f"--resume: {out} has no checkpoint to resume from")
    if not resume and out.exists() and any(out.iterdir()):
        raise ConfigError(f"run directory {out} already exists and is not empty; pass --resume to continue it "
                          "or choose another --out")


def _make_tokenizer(run_cfg: RunConfig, samples) -> MirasolTokenizer:
    if run_cfg.model.text_backbone:  # the LM's own tokenizer
        tokenizer = BackboneTokenizer.load(run_cfg.model.text_backbone, run_cfg.model)
    elif run_cfg.data.tokenizer:
        tokenizer = MirasolTokenizer.load(run_cfg.data.tokenizer)
    else:
        tokenizer = MirasolTokenizer.train(tokenizer_texts(samples), vocab_size=run_cfg.model.vocab_size)
    if tokenizer.vocab_size > run_cfg.model.vocab_size:
        raise ConfigError(f"config key 'model.vocab_size': the tokenizer has {tokenizer.vocab_size} tokens, "
                          f"more than model.vocab_size={run_cfg.model.vocab_size}")
    return tokenizer


# --- 2. model, optimizer, resume ----------------------------------------------------------------
def _build(run_cfg: RunConfig, run: _Run, device: torch.device, main: bool):
    tc = run_cfg.train
    torch.manual_seed(tc.seed)
    model = Mirasol.build(run_cfg.model, tc.freeze, tc.lora).to(device)
    if main:
        trainable, total = (sum(p.numel() for p in model.parameters() if p.requires_grad),
                            sum(p.numel() for p in model.parameters()))
        print(f"parameters: {trainable:,} trainable / {total:,} total ({100 * trainable / total:.2f} %)",
              file=sys.stderr)
    model.set_activation_checkpointing(tc.activation_checkpointing)
    fsdp = tc.strategy == "fsdp"
    if fsdp:
        shard_model(model, device, bf16=_precision(run_cfg, device) == "bf16")
    optimizer, scheduler = make_optimizer(model, tc, device)
    step = 0
    if run.resumed is not None:
        checkpoint, state = run.resume_from, run.resumed
        if run_dir.is_sharded(checkpoint) != fsdp:
            written = "train.strategy=fsdp" if run_dir.is_sharded(checkpoint) else "train.strategy=ddp"
            raise ConfigError(f"config key 'train.strategy': {checkpoint} was written with {written}; resume with "
                              f"that strategy (any number of processes works for fsdp)")
        if fsdp:  # model and optimizer are in the sharded files
            run_dir.load_sharded_checkpoint(checkpoint, model, optimizer)
        else:
            model.load_trained_weights(checkpoint / "model.safetensors", device=device)
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        step = int(state["step"])
        if main:
            print(f"resuming {checkpoint.parent.parent} from step {step}", file=sys.stderr)
    return model, optimizer, scheduler, step


# --- 3. one optimizer step ------------------------------------------------------------------------
def _train_step(forward, ddp, model, optimizer, scheduler, batch: dict, run_cfg: RunConfig, device: torch.device,
                world: int) -> dict:
    """One optimizer step over this process's share of a global batch; returns the logged row
    (losses averaged over processes, lr, grad norm)."""
    tc, fsdp = run_cfg.train, run_cfg.train.strategy == "fsdp"
    batch = _to(batch, device)
    micro = tc.batch_size // world // tc.grad_accum
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
            out = forward(p["video"], p["audio"], p["input_ids"], p["labels"], media_index=p["media_index"],
                          chunk_mask=p["chunk_mask"], return_logits=False)
            text = out.text_loss * counts[i] / total_tokens * world
            latent = out.latent_loss / tc.grad_accum
            loss = run_cfg.model.text_loss_weight * text + run_cfg.model.latent_loss_weight * latent
            if out.contrastive_loss is not None:  # model.av_contrastive_weight > 0
                loss = loss + run_cfg.model.av_contrastive_weight * out.contrastive_loss / tc.grad_accum
        loss.backward()
        logged += torch.stack([loss.detach(), text.detach(), latent.detach()]).float()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip) if tc.grad_clip else None
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    logged = _sum(logged) / world
    row = {"loss": logged[0].item(), "text_loss": logged[1].item(), "latent_loss": logged[2].item(),
           "lr": scheduler.get_last_lr()[0]}
    if grad_norm is not None:  # a DTensor under fsdp (already reduced over processes)
        row["grad_norm"] = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    return row


class _Speed:
    """Samples per second between two logged steps."""

    def __init__(self):
        self.tick, self.seen = time.perf_counter(), 0

    def rate(self, samples: int, log_now: bool) -> float | None:
        self.seen += samples
        if not log_now:
            return None
        elapsed, self.tick = time.perf_counter() - self.tick, time.perf_counter()
        rate, self.seen = self.seen / max(elapsed, 1e-9), 0
        return rate


def _log_step(log: MetricsLog, bar, row: dict, tc, speed: _Speed) -> None:
    step = row["step"]
    rate = speed.rate(tc.batch_size, step % tc.log_every == 0 or step == tc.max_steps)
    if rate is not None:
        row["samples_per_s"] = rate
        bar.set_postfix(loss=f"{row['loss']:.3f}", text=f"{row['text_loss']:.3f}",
                        latent=f"{row['latent_loss']:.3f}", sps=f"{rate:.0f}")
        log.log(row)


# --- 4. validation and checkpoints ---------------------------------------------------------------
def _validate_and_save(model, optimizer, scheduler, run_cfg: RunConfig, run: _Run, out: Path, step: int,
                       device: torch.device, log: MetricsLog | None, bar) -> dict:
    tc, fsdp, main = run_cfg.train, run_cfg.train.strategy == "fsdp", log is not None
    evaluate_now = run.val_set is not None and ((tc.eval_every and step % tc.eval_every == 0) or step == tc.max_steps)
    save_now = step % tc.save_every == 0 or step == tc.max_steps
    consolidate_now = save_now and (tc.save_consolidated or step == tc.max_steps)
    # fsdp: every process takes part in gathering the whole model (rank 0 receives it, on the CPU),
    # and rank 0 puts it into an unsharded copy, for validation and for model.safetensors
    full = full_state_dict(model) if fsdp and (evaluate_now or consolidate_now) else None
    plain = unsharded_copy(run_cfg, full, device) if full else None  # {} on ranks > 0
    val: dict = {}
    if evaluate_now and main:
        val = validate(plain if fsdp else model, run.val_set, run.tokenizer, run.stats, run_cfg, device,
                       tc.eval_samples)
        model.train()
        log.log({"step": step, **val})
        bar.write(f"step {step}: val text loss {val['val_text_loss']:.4f}, "
                  f"val accuracy {val['val_accuracy']:.3f} ({val['val_samples']} samples)")
    if save_now:
        state = {"step": step, "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()}
        if run.shards is not None:  # every lane's position (gathered from all processes)
            state["loader"] = run.shards.state_dict()
        if fsdp:  # the optimizer's state is sharded with the model, in the DCP files
            run_dir.save_sharded_checkpoint(out, model, optimizer, run_cfg.to_dict(), state, step,
                                            tc.keep_checkpoints, consolidated=plain if consolidate_now else None)
        elif main:
            state["optimizer"] = optimizer.state_dict()
            run_dir.save_checkpoint(out, model, run_cfg.to_dict(), state, step, tc.keep_checkpoints)
        _barrier()
    return val


@torch.no_grad()
def validate(model, dataset, tokenizer, stats, run_cfg, device, max_samples: int) -> dict:
    """Text loss and greedy-answer accuracy (overall and per family) on the first samples of `dataset`."""
    model.eval()
    n = min(len(dataset), max(max_samples, 1))
    loss_sum = tokens = 0.0
    rows: list[dict] = []
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
                              chunk_mask=batch["chunk_mask"], max_new_tokens=answer_budget(stats))
        rows += score_rows(samples, answers)
    model.train()
    return {"val_text_loss": loss_sum / max(tokens, 1), "val_accuracy": sum(r["correct"] for r in rows) / n,
            "val_samples": n,
            "val_accuracy_by_type": {f: round(h / c, 4) for f, (h, c) in accuracy_by_family(rows).items()}}


# --- small helpers --------------------------------------------------------------------------------
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


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
