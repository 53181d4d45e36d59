"""The `mirasol` command. Each subcommand parses its arguments here and its handler below hands
them, as plain paths and numbers, to the module that owns the work. Those modules are imported
inside the handlers, so that `mirasol --help` is instant and importing this module imports no torch."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from mirasol.errors import MirasolError, UsageError


# --- the handlers: argparse's namespace in, an exit status out ------------------------------
def cmd_synth(args) -> int:
    from mirasol.corpora.synth import synthesize

    num = getattr(args, "num", None)
    seed = getattr(args, "seed", 0)
    seed = 0 if seed is None else seed
    if getattr(args, "world", "default") == "long":
        from mirasol.corpora.long_world import DEFAULT_SECONDS, synthesize_long

        result = synthesize_long(args.out, num=num, seed=seed, seconds=args.seconds or DEFAULT_SECONDS,
                                 online=getattr(args, "online", False))
    elif getattr(args, "seconds", None) is not None or getattr(args, "online", False):
        raise UsageError("--seconds and --online apply to --world long")
    else:
        result = synthesize(args.out, num=num, seed=seed)
    print(f"wrote {result['num']} clips to {result['out']} in {result['seconds']:.1f} s "
          f"({result['clips_per_second']:.1f} clips/s)")
    for split, path in result["manifests"].items():
        print(f"  {split:5s}: {result['clips'][split]:5d} clips, {result['rows'][split]:6d} rows -> {path}")
    return 0


def cmd_prepare(args) -> int:
    from mirasol.data.cache import prepare, print_report, require_clips
    from mirasol.run_config import load_model_config

    cfg = load_model_config(args.config)
    report = prepare(args.manifest, args.out, cfg, workers=args.workers, store=args.store)
    print_report(report, args.out)
    require_clips(report, ", ".join(args.manifest), args.out)  # some clips skipped is fine, none usable is not
    return 0


def cmd_convert(args) -> int:
    """Exit 0 if any rows were written, 1 if none; an input error raises ConvertError (`main`
    prints it and exits with 2)."""
    from mirasol.corpora.adapters import convert

    stats = convert(args.format, args.annotations, args.videos, args.out, verbose=True)
    print(stats.summary())
    if not stats.written:
        hint = " (are the videos downloaded into --videos?)" if stats.missing else ""
        print(f"mirasol convert: no rows written{hint}", file=sys.stderr)
        return 1
    return 0


def cmd_shard(args) -> int:
    from mirasol.data.manifest import read_manifest
    from mirasol.data.shards import read_rows, write_shards, write_text_index

    if bool(args.manifest) == bool(args.text_of):
        raise UsageError("give either --manifest (write shards) or --text-of (index existing shards)")
    if args.text_of:  # shards written elsewhere (video2dataset): read every shard's text once, here
        rows, skipped = read_rows(args.text_of)
        text = Path(args.out) / f"{args.prefix}-text.jsonl"
        write_text_index(rows, text)
        print(f"wrote the text of {len(rows)} rows to {text} ({sum(map(len, skipped.values()))} samples skipped); "
              f"train with data.shard_text={text}")
        return 0 if rows else 1
    samples = [s for m in args.manifest for s in read_manifest(m)]
    result = write_shards(samples, args.out, args.shard_size, prefix=args.prefix, log=sys.stderr)
    print(f"wrote {result['clips']} clips ({result['rows']} rows) into {len(result['shards'])} shards: "
          f"{result['pattern']}; their text index: {result['text']} (train with data.shard_text=...)")
    return 0 if result["clips"] else 1


def cmd_train(args) -> int:
    import json

    import torch.distributed as dist

    from mirasol.config import ConfigError
    from mirasol.run_config import load_run_config
    from mirasol.train.loop import train

    # errors in the input reach `main`, which prints them as one line
    try:
        run_cfg = load_run_config(args.config, args.overrides)
        for path in [args.train] + ([args.val] if args.val else []):
            if not Path(path).exists() and not path.endswith(".tar"):  # shards: checked where they are read
                raise ConfigError(f"manifest {path} does not exist")
        summary = train(run_cfg, args.train, args.val, args.out, resume=args.resume, command=args.command_line)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    print(json.dumps(summary, indent=2))
    return 0


def cmd_evaluate(args) -> int:
    from mirasol.eval.evaluate import evaluate, format_table

    # input errors: printed by `main`
    report = evaluate(args.run, args.manifest, args.out, whole=args.whole, window=args.window, media=args.media,
                      online=args.online)
    print(format_table(report))
    if report.get("online"):
        from mirasol.eval.online import format_online

        print(format_online(report["online"]))
    print(f"report: {args.out}  predictions: {Path(args.out).with_name(report['predictions'])}")
    return 0


def cmd_ask(args) -> int:
    from mirasol.ask import ask, ask_stream, parse_times

    if args.window is not None and args.window < 1:
        raise UsageError(f"--window takes a number of chunks >= 1, got {args.window}")
    if args.whole or args.at:
        ask_stream(args.run, args.video, args.question, parse_times(args.at) if args.at else None,
                   args.start, args.end, args.window, whole=args.whole, log=sys.stderr, family=args.family)
    else:
        if args.window is not None:
            raise UsageError("--window applies to streaming: add --whole or --at")
        print(ask(args.run, args.video, args.question, args.start, args.end, log=sys.stderr, family=args.family))
    return 0


def cmd_watch(args) -> int:
    from mirasol.watch import parse_when, watch

    follow = {"auto": None, "yes": True, "no": False}[args.follow]
    result = watch(args.run, args.source, asks=args.ask, every=args.every,
                   whens=[parse_when(w) for w in args.when], window=args.window, until=args.until,
                   realtime=args.realtime, follow=follow, stall_timeout=args.stall_timeout, silent=args.silent,
                   max_behind=args.max_behind,
                   as_json=args.json, log=sys.stderr, stdin=None if args.no_stdin else sys.stdin)
    rate = result.video_seconds / result.wall_seconds if result.wall_seconds > 0 else 0.0
    print(f"watched {result.video_seconds:g} s of video in {result.wall_seconds:.1f} s ({rate:.2f}x real time): "
          f"{result.chunks} chunks, {result.dropped} dropped", file=sys.stderr)
    if result.message:
        print(f"mirasol watch: {result.message}", file=sys.stderr)
    return result.status


def cmd_quickstart(args) -> int:
    from mirasol.quickstart import quickstart

    quickstart(args.out, command=args.command_line)
    return 0


def cmd_bench(args) -> int:
    from mirasol.perf import run

    options = {}
    if args.preset:
        options["preset"] = args.preset
    if args.batch:
        options["batch_sizes"] = tuple(int(b) for b in args.batch.split(","))
    if args.combiner:
        options["combiners"] = tuple(args.combiner.split(","))
    if args.questions_per_clip:
        options["questions_per_clip"] = tuple(int(k) for k in args.questions_per_clip.split(","))
    if args.precision:
        options["precision"] = args.precision
    if args.compile:
        options["compile"] = True
    preset_only = args.what in ("serve", "watch") and set(options) == {"preset"}
    if options and args.what not in ("step", "all") and not preset_only:
        raise UsageError("--preset/--batch/--combiner/--questions-per-clip/--precision/--compile apply to `bench step` "
                         "only "
                         "(and --preset to `bench serve` and `bench watch`)")
    run(args.what, args.out, options)
    return 0


def cmd_ablate(args) -> int:
    from dataclasses import replace

    from mirasol.ablate import VARIANTS, GridSettings, format_table, parse_seeds, quick_settings, run_grid, table_only

    if args.table_only:
        if not args.results:
            raise UsageError("--table-only makes the tables from result files: give --results FOLDER")
        table_only(args.results, args.docs)
        return 0
    if not args.out:
        raise UsageError("give --out DIR (the grid folder), or --table-only --results FOLDER")
    if args.docs:
        raise UsageError("--docs applies to --table-only")
    settings = quick_settings(args.out) if args.quick else GridSettings(Path(args.out))
    changes = {}
    if args.seeds:
        changes["seeds"] = parse_seeds(args.seeds)
    for key in ("steps", "clips", "jobs", "threads"):
        value = getattr(args, key)
        if value is not None:
            if value < 1:
                raise UsageError(f"--{key} must be >= 1, got {value}")
            changes[key] = value
    if args.variants:
        changes["variants"] = tuple(v.strip() for v in args.variants.split(",") if v.strip())
        unknown = [v for v in changes["variants"] if v not in VARIANTS]
        if unknown:
            raise UsageError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.overrides:
        changes["extra"] = tuple(args.overrides)
    if args.results:
        changes["results"] = Path(args.results)
    summary = run_grid(replace(settings, **changes))
    print(format_table(summary))
    print(f"results: {Path(args.out) / 'results.json'}  table: {Path(args.out) / 'table.md'}  "
          f"plot: {Path(args.out) / 'accuracy_vs_flops.png'}")
    return 0


def cmd_serve(args) -> int:
    try:
        from mirasol.serve.app import serve
    except ImportError as error:
        raise UsageError(f"`mirasol serve` needs the serve extra: pip install 'mirasol[serve]' ({error})") from None
    from mirasol.serve.service import Limits

    if args.window is not None and args.window < 1:
        raise UsageError(f"--window takes a number of chunks >= 1, got {args.window}")
    if args.media_root is not None and not Path(args.media_root).is_dir():
        raise UsageError(f"--media-root {args.media_root}: not a folder (give the folder whose videos the chat "
                         f"endpoint may read by file:// URL)")
    if args.memory_cache_mb < 0:
        raise UsageError(f"--memory-cache-mb must be >= 0 (0 keeps no latents in memory), got {args.memory_cache_mb:g}")
    if args.batch_window_ms < 0 or args.max_batch < 1:
        raise UsageError(f"--batch-window-ms must be >= 0 and --max-batch >= 1, got {args.batch_window_ms:g} "
                         f"and {args.max_batch}")
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_seconds=args.max_seconds,
                    queue=args.queue, max_pending=args.max_pending)
    from mirasol.serve.streams import AllowList

    allow_streams = AllowList(args.allow_streams)  # checked before the model loads
    serve(args.run, host=args.host, port=args.port, token=args.token or os.environ.get("MIRASOL_SERVE_TOKEN"),
          cache_dir=args.cache, cache_bytes=int(args.cache_gb * 2**30), limits=limits, window=args.window,
          examples=args.examples, gradio=not args.no_gradio, log=sys.stderr, media_root=args.media_root,
          batch_window_s=args.batch_window_ms / 1000, max_batch=args.max_batch,
          memory_cache_bytes=int(args.memory_cache_mb * 2**20), allow_streams=allow_streams)
    return 0


def cmd_consolidate(args) -> int:
    from mirasol.run_dir import SHARDED, consolidate, is_sharded, latest_checkpoint

    path = Path(args.checkpoint)
    checkpoint = latest_checkpoint(path) if (path / "checkpoints").is_dir() else path
    if checkpoint is None or not is_sharded(checkpoint):
        print(f"mirasol consolidate: {path} is not a checkpoint of a train.strategy=fsdp run "
              f"(no {SHARDED}/ folder)", file=sys.stderr)
        return 2
    out = consolidate(checkpoint, args.out)
    print(f"wrote {out / 'model.safetensors'}; load it with Mirasol.from_pretrained('{out}')")
    return 0


def cmd_export(args) -> int:
    from mirasol.export import export

    export(args.run, args.out, reports=args.report, name=args.name, license=args.license, log=sys.stderr)
    print(f"load it with Mirasol.from_pretrained('{args.out}'); publish it with "
          f"`huggingface-cli upload OWNER/NAME {args.out}`")
    return 0


def cmd_lmms_task(args) -> int:
    from mirasol.lmms_eval.task import write_task

    try:
        result = write_task(args.manifest, args.out, args.name)
    except ValueError as err:  # a bad --name (a bad manifest row raises ManifestError, a MirasolError)
        raise UsageError(str(err)) from None
    for half, task in result["tasks"].items():
        print(f"  {task}: {result['rows'][half]} rows")
    print(f"wrote the lmms-eval task {result['name']} to {args.out}; run it with\n"
          f"  lmms-eval --model mirasol --model_args run=RUN --tasks {result['name']} --include_path {args.out}")
    return 0


# subcommand -> (handler, one-line help)
COMMANDS = {
    "synth": (cmd_synth, "write the built-in audio-visual dataset (mp4 + manifests)"),
    "prepare": (cmd_prepare, "decode a manifest's clips once into a cache"),
    "shard": (cmd_shard, "write a manifest's clips into WebDataset tar shards (or index existing shards' text)"),
    "convert": (cmd_convert, "official dataset annotations -> manifest"),
    "train": (cmd_train, "train a model"),
    "evaluate": (cmd_evaluate, "evaluate a trained run on a manifest"),
    "ask": (cmd_ask, "ask a trained run about a video file"),
    "watch": (cmd_watch, "follow a live video (a stream, a device, a growing file) and answer questions as it plays"),
    "quickstart": (cmd_quickstart, "synth + train + evaluate on the built-in dataset"),
    "bench": (cmd_bench, "performance benchmarks"),
    "ablate": (cmd_ablate, "train and evaluate the ablation grid on the long world (resumable)"),
    "serve": (cmd_serve, "a page and a JSON API to ask a trained run about videos (needs the serve extra)"),
    "consolidate": (cmd_consolidate, "one model.safetensors from a sharded (train.strategy=fsdp) checkpoint"),
    "lmms-task": (cmd_lmms_task, "a manifest as an lmms-eval task (YAML + local data) for `lmms-eval --model mirasol`"),
    "export": (cmd_export, "a trained run as a Hugging Face model folder with a model card (README.md)"),
}


def build_parser() -> argparse.ArgumentParser:
    # light (dataclasses + yaml, no torch), so --help stays instant
    from mirasol.ablate import VARIANTS, GridSettings
    from mirasol.choices import COMBINERS, CONVERT_FORMATS, MEDIA_CONTROLS, PRECISIONS, STORES, WORLDS
    from mirasol.run_config import config_keys_help

    parser = argparse.ArgumentParser(
        prog="mirasol",
        description="Mirasol3B: train, evaluate and query an autoregressive audio-video-text model.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an input error (also: MIRASOL_DEBUG=1), for bug reports")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("synth", help=COMMANDS["synth"][1], description=COMMANDS["synth"][1])
    p.add_argument("--out", required=True, help="output folder (videos + train/val/test.jsonl)")
    p.add_argument("--num", type=int, default=None, help="number of clips in all (default: the preset's size)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same dataset")
    p.add_argument("--world", default="default", choices=WORLDS,
                   help="default: 4 s clips (the quickstart's world); long: 32 one-second segments with events "
                        "spread over the whole clip (mirasol/corpora/long_world.py)")
    p.add_argument("--seconds", type=int, default=None, help="--world long: clip length in seconds (default 32)")
    p.add_argument("--online", action="store_true",
                   help="--world long: add the online families (colour now, tones so far, has the burst happened "
                        "yet), rows with `at` for `mirasol evaluate --online`")

    p = sub.add_parser("prepare", help=COMMANDS["prepare"][1], description=COMMANDS["prepare"][1])
    p.add_argument("--manifest", required=True, nargs="+", help="manifest(s), JSON Lines")
    p.add_argument("--out", required=True, help="cache folder (resumable; report.json is written there)")
    p.add_argument("--config", default=None, help="model config YAML or run dir whose media settings to use "
                   "(default: the tiny preset)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: CPU count)")
    p.add_argument("--store", default="auto", choices=STORES,
                   help="how clips are kept: auto (h264 when a raw clip would exceed 1 MiB of frames, else raw), "
                        "raw, h264, jpeg, or none (only checked; the loader decodes them on the fly). "
                        "Default: auto")

    p = sub.add_parser("shard", help=COMMANDS["shard"][1], description=COMMANDS["shard"][1])
    p.add_argument("--manifest", nargs="+", help="manifest(s), JSON Lines (e.g. mirasol synth's)")
    p.add_argument("--text-of", metavar="SHARDS", default=None,
                   help="instead of writing shards: read existing ones (path, URL or brace pattern ending in .tar, "
                        "e.g. video2dataset's) once and write only their text index, OUT/PREFIX-text.jsonl, for "
                        "data.shard_text")
    p.add_argument("--out", required=True, help="folder for the shards (and their text index, PREFIX-text.jsonl)")
    p.add_argument("--shard-size", type=int, default=1000, help="clips per shard (default 1000)")
    p.add_argument("--prefix", default="shard", help="shard file names: PREFIX-00000.tar, ... (default: shard)")

    p = sub.add_parser("convert", help=COMMANDS["convert"][1], description=COMMANDS["convert"][1])
    p.add_argument("--format", required=True, choices=CONVERT_FORMATS)
    p.add_argument("--annotations", required=True, nargs="+", help="the official annotation file(s), unchanged")
    p.add_argument("--videos", required=True, help="folder holding the downloaded videos")
    p.add_argument("--out", required=True, help="manifest to write (JSON Lines)")

    p = sub.add_parser("train", help=COMMANDS["train"][1], description=COMMANDS["train"][1],
                       epilog=config_keys_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config file, or a packaged config's name (listed below)")
    p.add_argument("--train", required=True, help="training manifest, or shards (a path / URL / brace pattern "
                   "ending in .tar: docs/shards.md)")
    p.add_argument("--val", default=None, help="validation manifest (or shards, unpacked once)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint in --out; train.*/data.* settings and model settings "
                        "that keep every weight (e.g. model.num_chunks) may change, and are printed")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-3 model.combiner=ttm")

    p = sub.add_parser("evaluate", help=COMMANDS["evaluate"][1], description=COMMANDS["evaluate"][1])
    p.add_argument("--run", required=True, help="run directory of a trained model")
    p.add_argument("--manifest", required=True, help="manifest to evaluate on (or shards ending in .tar, unpacked once)")
    p.add_argument("--out", required=True, help="report JSON to write (predictions.jsonl goes beside it)")
    p.add_argument("--whole", action="store_true",
                   help="stream each row's whole video chunk by chunk (as `ask --whole`), whatever the run's "
                        "training window")
    p.add_argument("--online", action="store_true",
                   help="stream each video once and answer each row with `at` (seconds) from the video before "
                        "`at` only; the report adds accuracy by when the question was asked")
    p.add_argument("--window", type=int, default=None, metavar="CHUNKS",
                   help="with --whole or --online: the AV model attends to the last CHUNKS chunks only")
    p.add_argument("--media", default="none", choices=MEDIA_CONTROLS,
                   help="a test-time control: audio or video (or both) replaced by silence / black frames, or the "
                        "time chunks shuffled (default: none)")

    p = sub.add_parser("ask", help=COMMANDS["ask"][1], description=COMMANDS["ask"][1])
    p.add_argument("--run", required=True, help="run directory of a trained model")
    p.add_argument("video", help="video file")
    p.add_argument("question", nargs="?", default=None, help="question; leave out for a caption")
    p.add_argument("--start", type=float, default=None, help="start second")
    p.add_argument("--end", type=float, default=None, help="end second")
    p.add_argument("--whole", action="store_true",
                   help="stream the whole video (or --start to --end) chunk by chunk and answer about all of it")
    p.add_argument("--at", default=None, metavar="SECONDS",
                   help="stream the video and answer after each of these seconds, e.g. --at 30,60,90")
    p.add_argument("--window", type=int, default=None, metavar="CHUNKS",
                   help="with --whole/--at: the AV model attends to the last CHUNKS chunks only (bounded memory)")
    p.add_argument("--family", default=None, metavar="TYPE",
                   help="answer by choosing the best-scoring of the answers this question family (a manifest "
                        "`type`) had in training, instead of decoding freely")

    p = sub.add_parser("watch", help=COMMANDS["watch"][1], formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=COMMANDS["watch"][1] + ".",
                       epilog="SOURCE: a file being written (followed as it grows: MPEG-TS, Matroska/WebM or "
                              "fragmented MP4), a stream FFmpeg opens live (udp://, rtp://, rtsp://, rtmp://, "
                              "http(s):// including HLS .m3u8 playlists, srt://, tcp://), a capture device "
                              "(/dev/video*), or a finished file (as fast as it decodes; --realtime: at its own "
                              "pace).\n\n"
                              "A line typed on standard input is a question answered at once about what has "
                              "been seen so far (--no-stdin: off).\n\n"
                              "When the model falls behind a live source (--max-behind) it drops to the newest "
                              "chunk and counts the chunks dropped.\n\n"
                              "Exit status: 0 at --until or the end of a file; 3 the live source ended or failed; "
                              "4 it stalled (--stall-timeout); 5 it has no audio (see --silent); 2 bad input.")
    p.add_argument("--run", required=True, help="run directory of a trained model")
    p.add_argument("source", help="file, stream URL or /dev/video device")
    p.add_argument("--ask", action="append", default=[], metavar="QUESTION",
                   help="a question answered every --every seconds of video (repeatable)")
    p.add_argument("--every", type=float, default=None, metavar="S",
                   help="answer the --ask questions every S seconds of video (default: every chunk)")
    p.add_argument("--when", action="append", default=[], metavar="QUESTION=ANSWER",
                   help="say the first chunk after which QUESTION's answer is ANSWER (repeatable), e.g. "
                        "--when \"what color is the object?=red\"")
    p.add_argument("--window", type=int, default=None, metavar="CHUNKS",
                   help="the model attends to, and answers about, the last CHUNKS chunks only (flat memory)")
    p.add_argument("--until", type=float, default=None, metavar="S", help="stop after S seconds of video")
    p.add_argument("--json", action="store_true",
                   help="one JSON object a line: video_seconds, question, answer, wall_time, lag_seconds, ...")
    p.add_argument("--realtime", action="store_true", help="play a finished file at its own pace")
    p.add_argument("--follow", choices=["auto", "yes", "no"], default="auto",
                   help="follow a file as it grows (auto: when it was modified in the last few seconds)")
    p.add_argument("--stall-timeout", type=float, default=10.0, metavar="S",
                   help="a live source that sends nothing for S seconds ends the watch (default 10); a "
                        "followed file that stops growing for S seconds is taken as finished")
    p.add_argument("--max-behind", type=float, default=2.0, metavar="S",
                   help="a live source: once a chunk has waited S seconds for the model, drop to the newest "
                        "chunk (default 2; the chunks dropped are counted)")
    p.add_argument("--silent", action="store_true", help="watch a source without audio (the model hears silence)")
    p.add_argument("--no-stdin", action="store_true", help="do not read questions from standard input")

    p = sub.add_parser("quickstart", help=COMMANDS["quickstart"][1], description=COMMANDS["quickstart"][1])
    p.add_argument("--out", default="quickstart", help="working folder (default: ./quickstart)")

    p = sub.add_parser("ablate", help=COMMANDS["ablate"][1], description=COMMANDS["ablate"][1])
    p.add_argument("--out", default=None, help="grid folder (worlds, runs, results.json, table.md, plot); "
                   "run the same command again to go on after an interruption")
    p.add_argument("--quick", action="store_true", help="a few minutes: toy world and steps, two seeds")
    p.add_argument("--seeds", default=None, help="comma-separated training seeds (default: "
                   f"{','.join(map(str, GridSettings.seeds))})")
    p.add_argument("--steps", type=int, default=None, help=f"training steps per run (default: {GridSettings.steps})")
    p.add_argument("--clips", type=int, default=None, help=f"clips per world (default: {GridSettings.clips})")
    sweeps = ", ".join(name for name, v in VARIANTS.items() if not v.default and name != "counting")
    p.add_argument("--variants", default=None, help=f"comma-separated subset of the rows: {', '.join(VARIANTS)} "
                   f"(default: all but the sweep rows {sweeps}, and counting, which has its own budget: "
                   "--variants counting --steps 6000)")
    p.add_argument("--jobs", type=int, default=None, help=f"runs trained at once (default: {GridSettings.jobs})")
    p.add_argument("--threads", type=int, default=None,
                   help=f"torch threads per run (default: {GridSettings.threads})")
    p.add_argument("--results", default=None, metavar="FOLDER",
                   help="also write each finished run's result file here (VARIANT-seedK-stepsN.json), take runs "
                        "already there as done (a grid shared across machines), and count them in the tables")
    p.add_argument("--table-only", action="store_true",
                   help="train nothing: make the tables (rows with 95%% intervals, claims with Welch p-values and "
                        "verdicts) from the --results files")
    p.add_argument("--docs", nargs="+", default=None, metavar="FILE",
                   help="with --table-only: markdown files whose <!-- ablate:KIND --> blocks are rewritten")
    p.add_argument("overrides", nargs="*", help="dotted overrides applied to every variant, e.g. model.audio_patch_mels=4")

    p = sub.add_parser("serve", help=COMMANDS["serve"][1], description=COMMANDS["serve"][1])
    p.add_argument("--run", required=True, help="run directory of a trained model")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other needs --token)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--token", default=None,
                   help="access token clients must send (default: $MIRASOL_SERVE_TOKEN; required off 127.0.0.1)")
    p.add_argument("--cache", default=None, help="latent cache folder (default ~/.cache/mirasol/serve)")
    p.add_argument("--cache-gb", type=float, default=2.0, help="latent cache size bound in GB (default 2)")
    p.add_argument("--memory-cache-mb", type=float, default=256.0,
                   help="latents of the most recently asked videos kept in memory, in front of the disk cache, "
                        "in MiB (default 256; 0 reads every question's latents from disk)")
    p.add_argument("--examples", default=None, help="a folder of example videos the page offers")
    p.add_argument("--max-upload-mb", type=float, default=200.0, help="largest upload (default 200 MiB)")
    p.add_argument("--max-seconds", type=float, default=600.0, help="longest video in seconds (default 600)")
    p.add_argument("--queue", type=int, default=8, help="videos waiting to be encoded before 503 (default 8)")
    p.add_argument("--max-pending", type=int, default=64, help="questions admitted at once before 503 (default 64)")
    p.add_argument("--window", type=int, default=None, metavar="CHUNKS",
                   help="the AV model attends to the last CHUNKS chunks only (bounded memory on long videos)")
    p.add_argument("--media-root", default=None, metavar="DIR",
                   help="the folder whose videos the chat endpoint (/v1/chat/completions) may read by file:// URL "
                   "(default: none; file:// URLs are refused)")
    p.add_argument("--batch-window-ms", type=float, default=5.0,
                   help="how long the first waiting question waits for others to share its batched decoder pass "
                   "(default 5 ms; 0: only those already waiting)")
    p.add_argument("--max-batch", type=int, default=32,
                   help="most questions answered in one batched decoder pass (default 32; 1: one at a time)")
    p.add_argument("--allow-streams", action="append", default=[], metavar="SCHEME://HOST[:PORT]",
                   help="let clients start live streams (POST /streams) from these sources only: comma-separated "
                   "or repeated, scheme udp, tcp, http or https, an exact host, and a port or * for any (no port: "
                   "any), e.g. --allow-streams udp://127.0.0.1,tcp://127.0.0.1:9000. Default: none (streams off). "
                   "The server relays the bytes; a sandboxed worker decodes them (docs/serving.md)")
    p.add_argument("--no-gradio", action="store_true",
                   help="do not mount the Gradio page at /gradio (by default it is, where the serve-gradio extra "
                   "is installed; the plain page at / is always there)")

    p = sub.add_parser("consolidate", help=COMMANDS["consolidate"][1], description=COMMANDS["consolidate"][1])
    p.add_argument("checkpoint", help="a checkpoint folder (RUN/checkpoints/step_N), or a run: its latest checkpoint")
    p.add_argument("--out", default=None, help="folder to write config.json + model.safetensors to "
                   "(default: the checkpoint folder itself)")

    p = sub.add_parser("export", help=COMMANDS["export"][1], description=COMMANDS["export"][1] + ": "
                       "model.safetensors, config.json, the tokenizer and README.md, which Mirasol.from_pretrained, "
                       "`mirasol ask --run`, lmms-eval and the Hugging Face Hub read")
    p.add_argument("run", help="run directory of a trained model")
    p.add_argument("--out", required=True, help="folder to write (new, or empty)")
    p.add_argument("--report", action="append", default=None, metavar="REPORT",
                   help="a `mirasol evaluate` report for the card's evaluation table (repeatable; default: "
                        "the reports of this run found in it, beside it, or one folder down from either)")
    p.add_argument("--name", default=None, help="the model's name in the card (default: the --out folder's name)")
    p.add_argument("--license", default="apache-2.0",
                   help="license of the weights, as a Hub license id (default: apache-2.0, the code's own)")

    p = sub.add_parser("lmms-task", help=COMMANDS["lmms-task"][1], description=COMMANDS["lmms-task"][1] + ": its "
                       "free-answer rows as a generate_until task, its rows with choices as a multiple_choice task, "
                       "and a group of both (docs/lmms-eval.md)")
    p.add_argument("manifest", help="manifest, JSON Lines (e.g. the test split of `mirasol synth`)")
    p.add_argument("--out", required=True, help="folder for the task files (lmms-eval's --include_path)")
    p.add_argument("--name", default=None, help="task name (default: mirasol_<manifest file name>)")

    p = sub.add_parser("bench", help=COMMANDS["bench"][1], description=COMMANDS["bench"][1])
    p.add_argument("what", nargs="?", default="all", help="which benchmark (default: all)")
    p.add_argument("--out", default=None, help="write results as JSON here")
    p.add_argument("--preset", default=None, help="step: model preset (default: tiny)")
    p.add_argument("--batch", default=None, help="step: batch sizes, comma-separated (default: 8,32)")
    p.add_argument("--combiner", default=None, help=f"step: combiners, comma-separated (default: {','.join(COMBINERS)})")
    p.add_argument("--questions-per-clip", default=None, help="step: comma-separated (default: 1,4)")
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="step: auto = bf16 on a GPU, fp32 on the CPU")
    p.add_argument("--compile", action="store_true", help="step: run the forward through torch.compile "
                   "(as train.compile; compilation falls in the warm-up)")

    # --debug is accepted after the command too; SUPPRESS keeps the top-level value when it is absent
    for p in sub.choices.values():
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.commands = sub.choices  # (for parse_args below)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with options free to stand between positionals. argparse alone reads
    positionals only where they stand together, so `ask VIDEO --whole "question?"` or
    `train ... a=1 --resume b=2` would leave one over; the command's own arguments are then read
    again with parse_intermixed_args."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extra = parser.parse_known_args(argv)
    if not extra or not args.command:
        return parser.parse_args(argv)  # (nothing left over, or an error argparse words itself)
    rest = argv[argv.index(args.command) + 1:]  # before the command there are only global options
    return parser.commands[args.command].parse_intermixed_args(
        rest, namespace=argparse.Namespace(debug=args.debug, command=args.command))


# Errors in what the user gave: their message alone says what is wrong and where. OSErrors of
# these kinds come from paths the user named (a missing manifest, an --out that is a file).
USER_ERRORS = (MirasolError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
               PermissionError)


def error_message(err: BaseException) -> str:
    """One line for a user error. An OSError raised by the system names the path and the reason; an
    error re-raised from a DataLoader worker carries the worker's traceback, of which the last line
    is the original message."""
    if isinstance(err, OSError) and err.filename is not None:
        return f"{err.filename}: {err.strerror}"
    text = str(err)
    if "\nOriginal Traceback" in text:
        last = text.rstrip().splitlines()[-1]  # "mirasol.media.decode.MediaError: <message>"
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def train_command(args, resume: bool) -> str:
    """The `mirasol train` command line of `args`, with or without --resume."""
    argv = ["mirasol", "train", "--config", args.config, "--train", args.train]
    argv += ["--val", args.val] if args.val else []
    argv += ["--out", args.out, *args.overrides] + (["--resume"] if resume else [])
    return shlex.join(str(a) for a in argv)


def interrupted_message(args) -> str:
    """One line for Ctrl-C: what was interrupted and how to go on."""
    head = f"mirasol {args.command}: interrupted"
    again = "run the same command again to go on"
    if args.command == "train":
        from mirasol.run_dir import latest_checkpoint

        out = Path(args.out)
        checkpoint = latest_checkpoint(out)
        if checkpoint is not None:
            return (f"{head}; the last checkpoint written is {checkpoint}: go on from it with "
                    f"`{train_command(args, resume=True)}`")
        start = f"delete {out} (or choose another --out) and run" if out.is_dir() and any(out.iterdir()) else "run"
        return (f"{head} before the first checkpoint: no checkpoint was written yet, so the run must start "
                f"again: {start} `{train_command(args, resume=False)}` (the clip cache keeps every clip "
                f"already stored)")
    if args.command == "prepare":
        return f"{head}; the cache {args.out} keeps every clip already stored: {again}"
    if args.command == "evaluate":
        return f"{head}; no report was written, the clip cache keeps every clip already stored: {again}"
    if args.command == "quickstart":
        return (f"{head}; the dataset, clip cache and checkpoints in {args.out} are kept: {again} "
                f"where it stopped")
    return f"{head} before it finished: run the same command again to start it over"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if not args.command:
        parser.print_help()
        return 2
    handler, _ = COMMANDS[args.command]
    # as typed, for the run's record (RUN/commands.jsonl, shown by its model card)
    args.command_line = shlex.join(["mirasol", *(sys.argv[1:] if argv is None else argv)])
    debug = args.debug or os.environ.get("MIRASOL_DEBUG", "") not in ("", "0")
    try:
        return int(handler(args) or 0)
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"mirasol {args.command}: error: {error_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
    # Ctrl-C. Printed once the except clause has let go of the interrupted frames, so that a
    # progress bar they held has closed its line before ours.
    print(interrupted_message(args), file=sys.stderr)
    return 130


if __name__ == "__main__":
    sys.exit(main())
