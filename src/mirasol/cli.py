"""The `mirasol` command. Each subcommand parses its arguments here and hands them to the module
that owns the work, imported lazily so that `mirasol --help` is instant."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from mirasol.errors import MirasolError

# subcommand -> (module, function, one-line help)
COMMANDS = {
    "synth": ("mirasol.datasets.synth", "cli_synth", "write the built-in audio-visual dataset (mp4 + manifests)"),
    "prepare": ("mirasol.data.cache", "cli_prepare", "decode a manifest's clips once into a cache"),
    "convert": ("mirasol.datasets.adapters", "cli_convert", "official dataset annotations -> manifest"),
    "train": ("mirasol.train.loop", "cli_train", "train a model"),
    "evaluate": ("mirasol.eval.evaluate", "cli_evaluate", "evaluate a trained run on a manifest"),
    "ask": ("mirasol.ask", "cli_ask", "ask a trained run about a video file"),
    "quickstart": ("mirasol.quickstart", "cli_quickstart", "synth + train + evaluate on the built-in dataset"),
    "bench": ("mirasol.bench", "cli_bench", "performance benchmarks"),
    "consolidate": ("mirasol.run_dir", "cli_consolidate",
                    "one model.safetensors from a sharded (train.strategy=fsdp) checkpoint"),
}


def build_parser() -> argparse.ArgumentParser:
    # light (dataclasses + yaml, no torch), so --help stays instant
    from mirasol.train.config import config_keys_help

    parser = argparse.ArgumentParser(
        prog="mirasol",
        description="Mirasol3B: train, evaluate and query an autoregressive audio-video-text model.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an input error (also: MIRASOL_DEBUG=1), for bug reports")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("synth", help=COMMANDS["synth"][2], description=COMMANDS["synth"][2])
    p.add_argument("--out", required=True, help="output folder (videos + train/val/test.jsonl)")
    p.add_argument("--num", type=int, default=None, help="number of clips in all (default: the preset's size)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same dataset")

    p = sub.add_parser("prepare", help=COMMANDS["prepare"][2], description=COMMANDS["prepare"][2])
    p.add_argument("--manifest", required=True, nargs="+", help="manifest(s), JSON Lines")
    p.add_argument("--out", required=True, help="cache folder (resumable; report.json is written there)")
    p.add_argument("--config", default=None, help="model config YAML or run dir whose media settings to use "
                   "(default: the tiny preset)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: CPU count)")
    p.add_argument("--store", default="auto", choices=["auto", "raw", "h264", "jpeg", "none"],
                   help="how clips are kept: auto (h264 when a raw clip would exceed 1 MiB of frames, else raw), "
                        "raw, h264, jpeg, or none (only checked; the loader decodes them on the fly). "
                        "Default: auto")

    p = sub.add_parser("convert", help=COMMANDS["convert"][2], description=COMMANDS["convert"][2])
    p.add_argument("--format", required=True,
                   choices=["msrvtt-qa", "activitynet-qa", "nextqa", "music-avqa", "vggsound", "ave"])
    p.add_argument("--annotations", required=True, nargs="+", help="the official annotation file(s), unchanged")
    p.add_argument("--videos", required=True, help="folder holding the downloaded videos")
    p.add_argument("--out", required=True, help="manifest to write (JSON Lines)")

    p = sub.add_parser("train", help=COMMANDS["train"][2], description=COMMANDS["train"][2],
                       epilog=config_keys_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config file, or a packaged config's name (listed below)")
    p.add_argument("--train", required=True, help="training manifest")
    p.add_argument("--val", default=None, help="validation manifest")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-3 model.combiner=ttm")

    p = sub.add_parser("evaluate", help=COMMANDS["evaluate"][2], description=COMMANDS["evaluate"][2])
    p.add_argument("--run", required=True, help="run directory of a trained model")
    p.add_argument("--manifest", required=True, help="manifest to evaluate on")
    p.add_argument("--out", required=True, help="report JSON to write (predictions.jsonl goes beside it)")

    p = sub.add_parser("ask", help=COMMANDS["ask"][2], description=COMMANDS["ask"][2])
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

    p = sub.add_parser("quickstart", help=COMMANDS["quickstart"][2], description=COMMANDS["quickstart"][2])
    p.add_argument("--out", default="quickstart", help="working folder (default: ./quickstart)")

    p = sub.add_parser("consolidate", help=COMMANDS["consolidate"][2], description=COMMANDS["consolidate"][2])
    p.add_argument("checkpoint", help="a checkpoint folder (RUN/checkpoints/step_N), or a run: its latest checkpoint")
    p.add_argument("--out", default=None, help="folder to write config.json + model.safetensors to "
                   "(default: the checkpoint folder itself)")

    p = sub.add_parser("bench", help=COMMANDS["bench"][2], description=COMMANDS["bench"][2])
    p.add_argument("what", nargs="?", default="all", help="which benchmark (default: all)")
    p.add_argument("--out", default=None, help="write results as JSON here")
    p.add_argument("--preset", default=None, help="step: model preset (default: tiny)")
    p.add_argument("--batch", default=None, help="step: batch sizes, comma-separated (default: 8,32)")
    p.add_argument("--combiner", default=None, help="step: combiners, comma-separated (default: transformer,ttm)")
    p.add_argument("--questions-per-clip", default=None, help="step: comma-separated (default: 1,4)")
    p.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16"],
                   help="step: auto = bf16 on a GPU, fp32 on the CPU")

    # --debug is accepted after the command too; SUPPRESS keeps the top-level value when it is absent
    for p in sub.choices.values():
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


# Errors in what the user gave us: their message alone says what is wrong and where. OSErrors of
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    module, func, _ = COMMANDS[args.command]
    try:
        handler = getattr(importlib.import_module(module), func)
        return int(handler(args) or 0)
    except USER_ERRORS as err:
        if args.debug or os.environ.get("MIRASOL_DEBUG", "") not in ("", "0"):
            raise
        print(f"mirasol {args.command}: error: {error_message(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
