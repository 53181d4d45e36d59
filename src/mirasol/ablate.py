"""`mirasol ablate`: the paper's claims as one resumable grid on the long world.

    mirasol ablate --out DIR [--quick] [--seeds 0,1,2] [--steps N] [--clips N] [--variants a,b] [--jobs 2]
                   [--results FOLDER]
    mirasol ablate --table-only --results FOLDER [--docs FILE.md ...]

Writes the long world (mirasol.corpora.long_world; 32 s clips) and its 8 s cut (for `short_train`)
under DIR/data, then trains and evaluates every variant x seed under DIR/runs/<variant>/seed<k>,
and writes DIR/results.json, DIR/table.md and DIR/accuracy_vs_flops.png. A run whose result.json
exists is kept; an interrupted run goes on from its last checkpoint, so running the same command
again continues where the grid stopped. With --results, each finished run's result file is also
written to FOLDER (`<variant>-seed<k>-steps<N>.json`, mirasol.eval.claims), a run whose file is
there already is not trained again (so a grid goes on across machines), and the tables count every
file of the same step budget. The tables give each row's mean, sd and 95 % interval over seeds, and
each claim's Welch test and verdict (mirasol.eval.stats). --table-only makes them from FOLDER alone
and rewrites the marked blocks of the --docs files.

Every variant is the reference recipe (configs/tiny.yaml: tiny preset, one combiner layer, latent
loss weight 0.1, text decoder at 2x lr) on 32 chunks of 1 s, trained with 4 whole clips x their 8
questions per step, changed only where its row says:

    reference     32 chunks x 1 s (2 frames each), Transformer combiner, m = 8 tokens per chunk,
                  autoregressive latent loss (weight 0.1), no masking
    ttm           the TTM combiner (memory 16, read 8)
    no_latent     latent loss weight 0
    mask_0.75     75 % of the combiner outputs replaced by the mask token in training
    whole_video   no time chunks: num_chunks = 1 with frames_per_chunk = 64 (all 32 s), so the video
                  encoder, the audio encoder and one combiner see the whole clip at once, and
                  combiner_tokens = 256 = 32 x 8: the decoder gets the same number of latent tokens
                  as the reference (the AV model then has one chunk and no latent loss target)
    chunks_8      8 chunks x 4 s (8 frames), m = 32: same frames, same 256 latent tokens
    chunks_16     16 chunks x 2 s (4 frames), m = 16: same frames, same 256 latent tokens
    short_train   trained on the 8 s cut of the same world (8 chunks x 1 s), tested on the 32 s clips
                  streamed whole (evaluate --whole)
    curriculum    short_train (the same steps), then steps / 2 more steps on the 32 s clips (32 chunks),
                  tested streamed whole (the streamed latents equal encode_media over the 32 chunks); the
                  second phase is `mirasol train --resume model.num_chunks=32` (docs/streaming.md). The
                  audio fix of benchmarks/ablations.md
    contrastive   the reference plus an audio-video InfoNCE loss between each chunk's pooled video
                  and audio tokens (model.av_contrastive_weight = 0.1, temperature 0.1)

Rows of the sweeps, run when --variants names them (the default grid leaves them out):

    latent_1.0    latent loss weight 1.0 (the sweep 0 / 0.1 / 1.0 with no_latent and the reference)
    mask_0.25, mask_0.5
                  25 % and 50 % of the combiner outputs masked (0 / 0.25 / 0.5 / 0.75)
    chunks_8_m8, chunks_16_m8
                  8 x 4 s and 16 x 2 s chunks with the reference's m = 8 tokens per chunk (64 and 128
                  latent tokens in all): the chunk count with tokens per chunk fixed, where chunks_8
                  and chunks_16 fix the total latents (256)
    curriculum_no_latent, curriculum_ttm
                  the curriculum with the latent loss off, or with the TTM combiner: two claims
                  tested on the recipe users are told to follow as well as on the reference

At test time only, the reference is also scored with the audio zeroed (silence), the video zeroed
(black), both zeroed (the question alone) and the chunks shuffled (eval/controls.py).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

from mirasol.choices import MEDIA_CONTROLS
from mirasol.errors import UsageError
from mirasol.eval.claims import (SETTING_KEYS, budget_of, by_budget, format_table, read_results, result_name,
                                 settings_of, summarize, update_docs, write_result)

REFERENCE_CONFIG = "tiny"
TEXT_LEN = 16  # tokens of a typical row (prompt + answer + specials), for the FLOPs count
CONTROLS = MEDIA_CONTROLS[1:]  # every control but "none"


@dataclass(frozen=True)
class Variant:
    name: str
    about: str
    overrides: tuple[str, ...] = ()
    world: str = "long"  # long | short (the 8 s cut)
    whole: bool = False  # evaluate by streaming the whole 32 s clip
    then_long: float = 0.0  # curriculum: after the short world, this fraction of steps more on the long one
    controls: tuple[str, ...] = ()
    default: bool = True  # in the grid unless --variants names the rows


CURRICULUM = Variant("curriculum", "8 s clips, then 32 s clips (steps / 2)", ("model.num_chunks=8",), world="short",
                     whole=True, then_long=0.5)


def on_curriculum(name: str, about: str, override: str) -> Variant:
    """A sweep row of the curriculum: its schedule and settings with one more override."""
    return replace(CURRICULUM, name=name, about=about, overrides=(*CURRICULUM.overrides, override), default=False)


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("reference", "32 x 1 s chunks, Transformer combiner, latent loss", controls=CONTROLS),
    Variant("ttm", "TTM combiner", ("model.combiner=ttm",)),
    Variant("no_latent", "no autoregressive latent loss", ("model.latent_loss_weight=0",)),
    Variant("mask_0.75", "combiner outputs masked 0.75", ("model.mask_ratio=0.75",)),
    Variant("whole_video", "no chunks: 1 x 32 s, m = 256",
            ("model.num_chunks=1", "model.frames_per_chunk=64", "model.combiner_tokens=256")),
    Variant("chunks_8", "8 x 4 s chunks, m = 32",
            ("model.num_chunks=8", "model.frames_per_chunk=8", "model.combiner_tokens=32")),
    Variant("chunks_16", "16 x 2 s chunks, m = 16",
            ("model.num_chunks=16", "model.frames_per_chunk=4", "model.combiner_tokens=16")),
    Variant("short_train", "trained on 8 s clips, streamed whole", ("model.num_chunks=8",), world="short",
            whole=True),
    Variant("contrastive", "reference + audio-video InfoNCE", ("model.av_contrastive_weight=0.1",)),
    CURRICULUM,
    Variant("latent_1.0", "latent loss weight 1.0", ("model.latent_loss_weight=1.0",), default=False),
    Variant("mask_0.25", "combiner outputs masked 0.25", ("model.mask_ratio=0.25",), default=False),
    Variant("mask_0.5", "combiner outputs masked 0.5", ("model.mask_ratio=0.5",), default=False),
    Variant("chunks_8_m8", "8 x 4 s chunks, m = 8 (64 latents)",
            ("model.num_chunks=8", "model.frames_per_chunk=8", "model.combiner_tokens=8"), default=False),
    Variant("chunks_16_m8", "16 x 2 s chunks, m = 8 (128 latents)",
            ("model.num_chunks=16", "model.frames_per_chunk=4", "model.combiner_tokens=8"), default=False),
    on_curriculum("curriculum_no_latent", "curriculum, no latent loss", "model.latent_loss_weight=0"),
    on_curriculum("curriculum_ttm", "curriculum, TTM combiner", "model.combiner=ttm"),
    Variant("counting", "chunk differences (model.chunk_delta); 8 s clips, then 32 s clips (steps / 4)",
            ("model.num_chunks=8", "model.chunk_delta=true"), world="short", whole=True, then_long=0.25,
            default=False),  # its own budget: --variants counting --steps 6000
)}


@dataclass
class GridSettings:
    out: Path
    variants: tuple[str, ...] = tuple(name for name, v in VARIANTS.items() if v.default)
    seeds: tuple[int, ...] = (0, 1, 2)
    steps: int = 1000
    clips: int = 600  # per world: 80 % train, 10 % val (unused), 10 % test
    seconds: int = 32
    short_seconds: int = 8
    clips_per_step: int = 4  # x 8 questions = the batch
    jobs: int = 2
    threads: int = 1  # torch threads per job
    extra: tuple[str, ...] = ()  # overrides applied to every variant (e.g. the audio fix)
    results: Path | None = None  # a folder of result files, shared across machines (mirasol.eval.claims)
    progress: bool = True
    log: object = field(default=None, repr=False)


QUESTIONS_PER_CLIP = 8  # the long world asks 8 questions about every clip


def long_steps(variant: Variant, steps: int) -> int:
    """Steps of a curriculum's second phase, on the long clips (0 for other rows)."""
    return int(steps * variant.then_long)


def long_phase(variant: Variant) -> Variant:
    """A curriculum's second phase: the row's own settings on the long clips."""
    return Variant("long", "", tuple(o for o in variant.overrides if not o.startswith("model.num_chunks=")))


def quick_settings(out: str | os.PathLike) -> GridSettings:
    """A few minutes on 2 cores: every variant, two seeds (so that the claims get a p-value), toy world
    and steps."""
    return GridSettings(Path(out), seeds=(0, 1), steps=20, clips=30, clips_per_step=2)


def grid_settings(settings: GridSettings) -> dict:
    """The settings a result file records: runs compare only when these agree."""
    values = {"clips": settings.clips, "seconds": settings.seconds, "clips_per_step": settings.clips_per_step,
              "extra": list(settings.extra)}
    return {k: values[k] for k in SETTING_KEYS}


def run_config_for(variant: Variant, settings: GridSettings, seed: int):
    from mirasol.run_config import load_run_config

    chunks = ["model.num_chunks=32"] if variant.world == "long" else [f"model.num_chunks={settings.short_seconds}"]
    if variant.world == "long" and settings.seconds != 32:
        chunks = [f"model.num_chunks={settings.seconds}"]
    overrides = [*chunks,
                 f"train.batch_size={settings.clips_per_step * QUESTIONS_PER_CLIP}",
                 f"train.questions_per_clip={QUESTIONS_PER_CLIP}",
                 f"train.max_steps={settings.steps}", f"train.seed={seed}",
                 f"train.warmup_steps={min(200, max(1, settings.steps // 10))}",
                 "train.eval_every=0", "train.plots=false", f"train.save_every={max(1, min(250, settings.steps))}",
                 *variant.overrides, *settings.extra]
    if variant.name == "whole_video" and settings.seconds != 32:
        overrides.append(f"model.frames_per_chunk={2 * settings.seconds}")
    return load_run_config(REFERENCE_CONFIG, overrides)


def _worlds(settings: GridSettings) -> dict[str, Path]:
    from mirasol.corpora.long_world import synthesize_long

    data = settings.out / "data"
    worlds = {"long": data / f"long{settings.seconds}"}
    if any(VARIANTS[v].world == "short" for v in settings.variants):
        worlds["short"] = data / f"long{settings.short_seconds}"
    for name, path in worlds.items():
        seconds = settings.seconds if name == "long" else settings.short_seconds
        if not (path / "test.jsonl").exists():
            synthesize_long(path, num=settings.clips, seed=0, seconds=seconds, progress=settings.progress)
    return worlds


def _prepare_stores(settings: GridSettings, worlds: dict[str, Path]) -> None:
    """Decode every media configuration's clips once, before parallel jobs would race for them."""
    from mirasol.data.cache import default_cache_dir
    from mirasol.data.dataset import ready_clips

    done = set()
    for name in settings.variants:
        variant = VARIANTS[name]
        cfg = run_config_for(variant, settings, 0)
        world = worlds[variant.world]
        manifests = [str(world / "train.jsonl"), str(world / "test.jsonl")]
        cache = default_cache_dir(manifests[0], cfg.model, cfg.data.store)
        if cache not in done:
            ready_clips(manifests, cache, cfg.data, cfg.model, progress=settings.progress)
            done.add(cache)


def _run_one(job: dict) -> dict:
    """Train one variant x seed (resuming), evaluate it, write result.json. Runs in a worker process."""
    import torch

    torch.set_num_threads(job["threads"])
    from mirasol.eval.evaluate import evaluate
    from mirasol.run_dir import latest_checkpoint
    from mirasol.train.loop import train

    settings: GridSettings = job["settings"]
    variant = VARIANTS[job["variant"]]
    seed, run = job["seed"], Path(job["run"])
    result_file = run / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    worlds = job["worlds"]
    world = Path(worlds[variant.world])
    run_cfg = run_config_for(variant, settings, seed)
    last = latest_checkpoint(run / "train")
    resume = last is not None
    if not resume and (run / "train").exists():
        shutil.rmtree(run / "train")  # killed before its first checkpoint: start again
    started = time.perf_counter()
    quiet = open(os.devnull, "w")
    stdout = sys.stdout
    try:
        sys.stdout = quiet  # the store's report and the summary; the grid prints one line per run
        done_steps = int(last.name.split("_")[-1]) if last is not None else 0
        if done_steps < settings.steps:
            train(run_cfg, str(world / "train.jsonl"), None, run / "train", resume=resume, progress=False)
        if variant.then_long:  # second phase: the same run goes on over the long clips
            long_cfg = run_config_for(long_phase(variant), settings, seed)
            long_cfg.train.max_steps = settings.steps + long_steps(variant, settings.steps)
            train(long_cfg, str(Path(worlds["long"]) / "train.jsonl"), None, run / "train", resume=True,
                  progress=False)
        train_seconds = time.perf_counter() - started
        test = Path(worlds["long"]) / "test.jsonl"
        reports = {}
        t0 = time.perf_counter()
        reports["test"] = evaluate(run / "train", test, run / "test" / "report.json", progress=False,
                                   whole=variant.whole)
        if variant.world == "short":  # also in its own world
            reports["short_test"] = evaluate(run / "train", world / "test.jsonl", run / "short_test" / "report.json",
                                             progress=False)
        for control in variant.controls:
            reports[control] = evaluate(run / "train", test, run / control / "report.json", progress=False,
                                        media=control, seed=seed)
        eval_seconds = time.perf_counter() - t0
    finally:
        sys.stdout = stdout
        quiet.close()
    from mirasol.cost import model_flops
    from mirasol.model import Mirasol

    cfg = run_cfg.model
    flops = model_flops(cfg, TEXT_LEN, QUESTIONS_PER_CLIP)["train"]
    total = flops * settings.steps * run_cfg.train.batch_size
    if variant.then_long:  # FLOPs per sample: the mean over both phases' samples
        long_flops = model_flops(run_config_for(long_phase(variant), settings, seed).model,
                                 TEXT_LEN, QUESTIONS_PER_CLIP)["train"]
        total += long_flops * long_steps(variant, settings.steps) * run_cfg.train.batch_size
        flops = total / ((settings.steps + long_steps(variant, settings.steps)) * run_cfg.train.batch_size)
    result = {
        "variant": variant.name, "seed": seed, "overrides": list(variant.overrides) + list(settings.extra),
        "steps": settings.steps + long_steps(variant, settings.steps), "budget": settings.steps,
        "settings": grid_settings(settings), "batch": run_cfg.train.batch_size,
        "train_flops_per_sample": flops, "train_flops": total,
        "parameters": Mirasol(cfg).num_parameters()["total"],
        "train_seconds": train_seconds, "eval_seconds": eval_seconds, "resumed": resume, "threads": job["threads"],
        "reports": {k: {"accuracy": r["accuracy"], "by_type": r["by_type"], "n": r["n"]} for k, r in reports.items()},
    }
    tmp = result_file.with_suffix(".part")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, result_file)
    return result


def run_grid(settings: GridSettings) -> dict:
    """Every variant x seed, then the summary (results.json, table.md, the plot)."""
    log = settings.log or (lambda text: print(text, flush=True))
    unknown = [v for v in settings.variants if v not in VARIANTS]
    if unknown:
        raise UsageError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    if not settings.seeds:
        raise UsageError("give at least one seed")
    shared = _shared_results(settings)
    settings.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    todo = [(v, s) for s in settings.seeds for v in settings.variants
            if not (settings.out / "runs" / v / f"seed{s}" / "result.json").exists()
            and result_name(v, s, settings.steps) in shared]
    if todo:
        log(f"{len(todo)} run(s) finished elsewhere, taken from {settings.results}: "
            + ", ".join(f"{v} seed {s}" for v, s in todo))
    pairs = [(v, s) for s in settings.seeds for v in settings.variants if (v, s) not in todo]
    worlds = _worlds(settings) if pairs else {}
    if pairs:
        _prepare_stores(settings, worlds)
        log(f"worlds and clip stores ready in {time.perf_counter() - started:.0f} s")
    jobs = [{"settings": settings, "variant": v, "seed": s, "worlds": {k: str(p) for k, p in worlds.items()},
             "run": str(settings.out / "runs" / v / f"seed{s}"), "threads": settings.threads} for v, s in pairs]
    results = [shared[result_name(v, s, settings.steps)] for v, s in todo]

    def done(result: dict) -> None:
        results.append(result)
        if settings.results is not None:
            write_result(settings.results, result)
        log(f"[{len(results) - len(todo)}/{len(jobs)}] {result['variant']} seed {result['seed']}: "
            f"accuracy {result['reports']['test']['accuracy']:.3f} (train {result['train_seconds']:.0f} s, "
            f"eval {result['eval_seconds']:.0f} s)")

    picklable = GridSettings(**{**settings.__dict__, "log": None})
    for job in jobs:
        job["settings"] = picklable
    if settings.jobs > 1:
        with ProcessPoolExecutor(max_workers=settings.jobs, mp_context=get_context("spawn")) as pool:
            for result in pool.map(_run_one, jobs):
                done(result)
    else:
        for job in jobs:
            done(_run_one(job))
    # the table covers every finished run of this budget in the folder (also those of earlier calls
    # with other variants) and in the results folder
    seen = {(r["variant"], r["seed"]) for r in results}
    for path in sorted((settings.out / "runs").glob("*/seed*/result.json")):
        earlier = json.loads(path.read_text())
        if earlier["variant"] in VARIANTS and "budget" not in earlier:  # written before budgets were recorded
            earlier["budget"] = round(earlier["steps"] / (1 + VARIANTS[earlier["variant"]].then_long))
        if ((earlier["variant"], earlier["seed"]) not in seen and earlier["variant"] in VARIANTS
                and budget_of(earlier) == settings.steps):
            results.append(earlier)
            seen.add((earlier["variant"], earlier["seed"]))
    results += [r for r in shared.values() if r.get("kind") == "summary" or (r["variant"], r["seed"]) not in seen]
    order = list(VARIANTS)
    results.sort(key=lambda r: (order.index(r["variant"]) if r["variant"] in order else len(order), r.get("seed", -1)))
    summary = summarize(results, settings, order)
    summary["grid_seconds"] = time.perf_counter() - started
    (settings.out / "results.json").write_text(json.dumps(summary, indent=2))
    (settings.out / "table.md").write_text(format_table(summary) + "\n")
    plot(summary, settings.out / "accuracy_vs_flops.png")
    return summary


def _shared_results(settings: GridSettings) -> dict[str, dict]:
    """The results folder's files of this step budget, by file name; they must have been made with
    this grid's settings."""
    if settings.results is None or not Path(settings.results).is_dir():
        return {}
    mine = grid_settings(settings)
    shared = {}
    for result in read_results(settings.results):
        if budget_of(result) != settings.steps or result["variant"] not in VARIANTS:
            continue
        if settings_of(result) != mine:
            raise UsageError(f"{Path(settings.results) / result['file']} was made with other grid settings "
                             f"({settings_of(result)}, this grid: {mine}); use another --results folder")
        shared[result["file"]] = result
    return shared


def table_only(results_folder: str | os.PathLike, docs: list[str] | None = None, log=print) -> dict[int, dict]:
    """The tables of every step budget in a results folder, printed, and written into the marked
    blocks of `docs` (markdown files). Returns the summaries by step budget."""
    order = list(VARIANTS)
    results = [r for r in read_results(results_folder) if r["variant"] in VARIANTS]
    if not results:
        raise UsageError(f"no result files in {results_folder} (write them with `mirasol ablate ... --results "
                         f"{results_folder}`)")
    summaries = {}
    for budget, group in by_budget(results).items():
        group.sort(key=lambda r: (order.index(r["variant"]), r.get("seed", -1)))
        summaries[budget] = summarize(group, order=order)
        log(f"## {budget} steps ({len(group)} result files)\n\n{format_table(summaries[budget])}\n")
    for path, count in (update_docs(docs, summaries) if docs else {}).items():
        log(f"wrote {count} table(s) into {path}")
    return summaries


def plot(summary: dict, path: Path) -> Path | None:
    """Overall accuracy against training FLOPs, one point per trained variant, error bars over seeds."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, r in summary["rows"].items():
        if "train_flops" not in r:
            continue
        mean, std = r["accuracy"]
        ax.errorbar(r["train_flops"] / 1e12, mean, yerr=std, fmt="o", capsize=3)
        ax.annotate(label, (r["train_flops"] / 1e12, mean), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (TFLOP, counted: mirasol.cost.model_flops x steps x batch)")
    ax.set_ylabel("test accuracy, all families (mean ± sd over seeds)")
    ax.set_title("Ablations on the long world")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UsageError(f"--seeds takes whole numbers separated by commas, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds):
        raise UsageError(f"--seeds takes whole numbers >= 0, got {text!r}")
    return seeds


__all__ = ["VARIANTS", "GridSettings", "quick_settings", "run_grid", "summarize", "format_table", "table_only"]
