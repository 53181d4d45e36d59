"""Every error a user can cause ends in one line, `mirasol <command>: error: <message>`, on stderr
with exit status 2 and no traceback; the message names the file, line or key. `--debug` and
MIRASOL_DEBUG=1 show the traceback; a bug (any other exception) always does.

Each subcommand is run through `mirasol.cli.main`, the function `python -m mirasol.cli` calls, in
this process (one torch import for all cases); the headline cases also run as a real subprocess."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mirasol.cli import main
from mirasol.data.cache import ClipCache, clip_key
from mirasol.data.manifest import ManifestError
from mirasol.run_config import load_run_config

from conftest import make_run

FAST = ["train.batch_size=2", "train.max_steps=2", "train.eval_every=0", "train.plots=false",
        "train.questions_per_clip=1"]


class Evil:
    """Stands for any object a checkpoint must not hold: unpickling it means importing this class."""


class RunsCode:
    """Unpickling this calls os.system: what weights_only=True exists to refuse."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def row(i: int, video: str) -> dict:
    return {"id": f"r{i}", "video": video, "task": "qa", "question": "what color is it?", "answer": "red"}


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The bad inputs (and the good ones around them), made without decoding or training anything."""
    d = tmp_path_factory.mktemp("bad_inputs")
    f = {"dir": d}
    f["good"] = write_jsonl(d / "good.jsonl", [row(i, f"clips/c{i}.mp4") for i in range(3)])
    lines = [json.dumps(row(i, "clips/c.mp4")) for i in range(5)]
    lines[3] = '{"id": "r3", "video": "clips/c.mp4", "task": '  # line 4: cut short
    (d / "broken.jsonl").write_text("\n".join(lines) + "\n")
    f["broken"] = str(d / "broken.jsonl")
    (d / "empty.mp4").write_bytes(b"")
    f["empty_mp4"] = str(d / "empty.mp4")
    (d / "zero").mkdir()
    (d / "zero" / "empty.mp4").write_bytes(b"")
    f["zero_video"] = write_jsonl(d / "zero" / "m.jsonl", [row(0, "empty.mp4"), row(1, "empty.mp4")])
    (d / "badkey.yaml").write_text("model:\n  preset: tiny\n  num_chunk: 3\n")
    f["badkey"] = str(d / "badkey.yaml")
    (d / "videos").mkdir()

    # a finished run as `mirasol train` leaves it (untrained weights are enough to load)
    f["run"] = str(make_run(d / "run", ["what color is it? red green"]))
    # the same run with its weights file damaged
    damaged = make_run(d / "damaged_run", ["what color is it? red green"])
    (damaged / "model.safetensors").write_bytes(b"\x00" * 100)
    f["damaged_run"] = str(damaged)
    (d / "not_a_run").mkdir()
    (d / "not_a_run" / "notes.txt").write_text("hello")
    f["not_a_run"] = str(d / "not_a_run")

    # runs to --resume whose last checkpoint holds arbitrary pickled objects, or is empty
    for name, state in [("evil", {"step": 2, "optimizer": Evil()}),
                        ("runs_code", {"step": 2, "optimizer": RunsCode(d / "code_ran")}),
                        ("empty_state", None), ("lacking_keys", {"step": 2})]:
        ckpt = d / name / "checkpoints" / "step_00000002"
        ckpt.mkdir(parents=True)
        if state is None:
            (ckpt / "train_state.pt").write_bytes(b"")
        else:
            torch.save(state, ckpt / "train_state.pt")
        f[name] = str(d / name)
    return f


def cli(argv, capsys) -> tuple[int, str]:
    """Exit status and everything printed, as `python -m mirasol.cli ARGV` would give them."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    out = capsys.readouterr()
    return code, out.out + out.err


# (subcommand arguments with {names} from `files`, what the message must say)
CASES = {
    "synth --out is a file": (["synth", "--out", "{good}", "--num", "3"], "--out {good} is a file"),
    "synth bad --num": (["synth", "--out", "{dir}/s", "--num", "1"], "--num must be at least 3"),
    "prepare missing manifest": (["prepare", "--manifest", "{dir}/nope.jsonl", "--out", "{dir}/c1"],
                                 "{dir}/nope.jsonl: No such file or directory"),
    "prepare broken JSON line": (["prepare", "--manifest", "{broken}", "--out", "{dir}/c2"],
                                 "{broken}:4: not valid JSON"),
    "prepare unknown key": (["prepare", "--manifest", "{good}", "--out", "{dir}/c3", "--config", "{badkey}"],
                            "unknown config key 'num_chunk'; did you mean 'num_chunks'?"),
    "prepare zero-byte video": (["prepare", "--manifest", "{zero_video}", "--out", "{dir}/c4", "--workers", "1"],
                                "no clip of {zero_video} could be decoded (first: {dir}/zero/empty.mp4: empty file"),
    "convert wrong --format": (["convert", "--format", "msrvtt", "--annotations", "{good}", "--videos",
                                "{dir}/videos", "--out", "{dir}/m.jsonl"],
                               "argument --format: invalid choice: 'msrvtt'"),
    "convert missing file": (["convert", "--format", "msrvtt-qa", "--annotations", "{dir}/train_qa.json",
                              "--videos", "{dir}/videos", "--out", "{dir}/m.jsonl"],
                             "annotation file not found: {dir}/train_qa.json"),
    "convert broken JSON": (["convert", "--format", "msrvtt-qa", "--annotations", "{broken}", "--videos",
                             "{dir}/videos", "--out", "{dir}/m.jsonl"], "{broken}: not valid JSON"),
    "train missing manifest": (["train", "--config", "tiny", "--train", "{dir}/nope.jsonl", "--out", "{dir}/r1"],
                               "manifest {dir}/nope.jsonl does not exist"),
    "train broken JSON line": (["train", "--config", "tiny", "--train", "{broken}", "--out", "{dir}/r2"],
                               "{broken}:4: not valid JSON"),
    "train broken JSON line, loader workers": (["train", "--config", "tiny", "--train", "{broken}", "--out",
                                                "{dir}/r2", "data.workers=2"], "{broken}:4: not valid JSON"),
    "train unknown key in YAML": (["train", "--config", "{badkey}", "--train", "{good}", "--out", "{dir}/r3"],
                                  "unknown config key 'num_chunk'"),
    "train unknown key override": (["train", "--config", "tiny", "--train", "{good}", "--out", "{dir}/r3",
                                    "train.lrate=1"], "unknown config key 'train.lrate'; did you mean 'train.lr'?"),
    "train missing config": (["train", "--config", "{dir}/nope.yaml", "--train", "{good}", "--out", "{dir}/r3"],
                             "config file {dir}/nope.yaml does not exist"),
    "train zero-byte videos": (["train", "--config", "tiny", "--train", "{zero_video}", "--out", "{dir}/r4"],
                               "no clip of {zero_video} could be decoded (first: {dir}/zero/empty.mp4: empty file"),
    "train unsafe checkpoint (class instance)": (
        ["train", "--config", "tiny", "--train", "{good}", "--out", "{evil}", "--resume"],
        "{evil}/checkpoints/step_00000002/train_state.pt was refused: it is not a plain tensor file (it holds "
        "a pickled "),
    "train unsafe checkpoint (code)": (
        ["train", "--config", "tiny", "--train", "{good}", "--out", "{runs_code}", "--resume"],
        "{runs_code}/checkpoints/step_00000002/train_state.pt was refused: it is not a plain tensor file (it "
        "holds a pickled posix.system), and loading it could run arbitrary code"),
    "train empty checkpoint": (["train", "--config", "tiny", "--train", "{good}", "--out", "{empty_state}",
                                "--resume"], "{empty_state}/checkpoints/step_00000002/train_state.pt: not a "
                                             "readable checkpoint"),
    "train checkpoint lacking keys": (
        ["train", "--config", "tiny", "--train", "{good}", "--out", "{lacking_keys}", "--resume"],
        "{lacking_keys}/checkpoints/step_00000002/train_state.pt lacks the keys 'scheduler', 'rng', 'optimizer' "
        "that --resume needs, so it was not written by `mirasol train`: delete "
        "{lacking_keys}/checkpoints/step_00000002 to resume from the checkpoint before it, or start a new run"),
    "train --resume without checkpoint": (["train", "--config", "tiny", "--train", "{good}", "--out",
                                           "{not_a_run}", "--resume"], "--resume: {not_a_run} has no checkpoint"),
    "evaluate not a run": (["evaluate", "--run", "{not_a_run}", "--manifest", "{good}", "--out", "{dir}/e.json"],
                           "{not_a_run}/config.json not found: is {not_a_run} a finished `mirasol train` run"),
    "evaluate missing run": (["evaluate", "--run", "{dir}/nope", "--manifest", "{good}", "--out", "{dir}/e.json"],
                             "{dir}/nope/config.json not found"),
    "evaluate broken JSON line": (["evaluate", "--run", "{run}", "--manifest", "{broken}", "--out",
                                   "{dir}/e.json"], "{broken}:4: not valid JSON"),
    "evaluate missing manifest": (["evaluate", "--run", "{run}", "--manifest", "{dir}/nope.jsonl", "--out",
                                   "{dir}/e.json"], "{dir}/nope.jsonl: No such file or directory"),
    "evaluate zero-byte videos": (["evaluate", "--run", "{run}", "--manifest", "{zero_video}", "--out",
                                   "{dir}/e.json"], "no clip of {zero_video} could be decoded"),
    "evaluate damaged weights": (["evaluate", "--run", "{damaged_run}", "--manifest", "{good}", "--out",
                                  "{dir}/e.json"], "{damaged_run}/model.safetensors: not a readable safetensors"),
    "ask zero-byte video": (["ask", "--run", "{run}", "{empty_mp4}", "what color is it?"],
                            "{empty_mp4}: empty file (0 bytes)"),
    "ask missing video": (["ask", "--run", "{run}", "{dir}/nope.mp4"], "{dir}/nope.mp4: file not found"),
    "ask not a run": (["ask", "--run", "{not_a_run}", "{empty_mp4}"], "{not_a_run}/config.json not found"),
    "bench bad name": (["bench", "nosuch"], "unknown benchmark 'nosuch' (choose from all, step"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_line(case, files, capsys):
    argv, expected = CASES[case]
    code, output = cli([a.format(**files) for a in argv], capsys)
    assert code == 2, output
    assert f"mirasol {argv[0]}: error: {expected.format(**files)}" in output
    assert "Traceback" not in output
    assert "code_ran" not in os.listdir(files["dir"])  # the refused pickle ran nothing


def test_train_state_lacking_keys(tmp_path):
    """A train_state.pt that loads but lacks what --resume needs is a CheckpointError naming the
    file, the keys and the fix; a sharded (fsdp) checkpoint keeps its optimizer elsewhere."""
    from mirasol.errors import CheckpointError
    from mirasol.run_dir import load_train_state

    ckpt = tmp_path / "checkpoints" / "step_00000004"
    ckpt.mkdir(parents=True)
    torch.save({"step": 4, "scheduler": {}, "rng": torch.get_rng_state()}, ckpt / "train_state.pt")
    with pytest.raises(CheckpointError) as err:
        load_train_state(ckpt)
    assert str(err.value) == (f"{ckpt}/train_state.pt lacks the key 'optimizer' that --resume needs, so it was not "
                              f"written by `mirasol train`: delete {ckpt} to resume from the checkpoint before it, "
                              "or start a new run")
    (ckpt / "sharded").mkdir()
    assert load_train_state(ckpt)["step"] == 4
    torch.save([1, 2], ckpt / "train_state.pt")
    with pytest.raises(CheckpointError, match=r"lacks the keys 'step', 'scheduler', 'rng' that --resume needs "
                                              r"\(it holds a list, not a dict\)"):
        load_train_state(ckpt)


def test_error_from_a_loader_worker_is_one_line(files, tmp_path, capsys):
    """A damaged clip cache is found in a DataLoader worker; the error crosses the process
    boundary (with the worker's traceback in its text) and still prints as one line."""
    cfg = load_run_config("tiny").model
    manifest = write_jsonl(tmp_path / "m.jsonl", [row(i, f"c{i}.mp4") for i in range(4)])
    cache = ClipCache(tmp_path / "cache", cfg, create=True)
    with open(cache.root / "index.jsonl", "w") as f:  # four clips listed, no bytes behind them
        for i in range(4):
            f.write(json.dumps({"key": clip_key(str(tmp_path / f"c{i}.mp4"), None, None), "row": i, "id": f"r{i}",
                                "has_audio": True, "valid_seconds": 4.0, "valid_chunks": 4}) + "\n")
    np.zeros(10, np.uint8).tofile(cache.root / "video.u8")
    code, output = cli(["train", "--config", "tiny", "--train", manifest, "--out", tmp_path / "run",
                        f"data.cache={cache.root}", "data.workers=1", *FAST], capsys)
    assert code == 2, output
    assert f"mirasol train: error: {cache.root}/video.u8 holds 0 clips but index.jsonl lists 4" in output
    assert "Traceback" not in output


def test_debug_shows_the_traceback(files, capsys):
    with pytest.raises(ManifestError, match="broken.jsonl:4"):
        main(["--debug", "prepare", "--manifest", files["broken"], "--out", str(files["dir"] / "c5")])
    with pytest.raises(ManifestError, match="broken.jsonl:4"):  # also accepted after the command
        main(["prepare", "--manifest", files["broken"], "--out", str(files["dir"] / "c5"), "--debug"])


def test_a_bug_keeps_its_traceback(monkeypatch):
    import mirasol.perf

    def broken(*args, **kwargs):
        raise KeyError("a bug, not the user's fault")

    monkeypatch.setattr(mirasol.perf, "run", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["bench", "step"])


def run_module(*args, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "mirasol.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_subprocess_headline_cases(files):
    """The two cases of the issue, as a user runs them: a manifest whose line 4 is broken JSON, and
    --resume on a train_state.pt holding a pickled object."""
    broken = run_module("train", "--config", "tiny", "--train", files["broken"], "--out", files["dir"] / "r9")
    assert broken.returncode == 2
    assert broken.stderr.strip() == (f"mirasol train: error: {files['broken']}:4: not valid JSON: Expecting value "
                                     "(column 46)")
    evil = run_module("train", "--config", "tiny", "--train", files["good"], "--out", files["evil"], "--resume")
    assert evil.returncode == 2
    assert evil.stderr.startswith(f"mirasol train: error: {files['evil']}/checkpoints/step_00000002/train_state.pt "
                                  "was refused: it is not a plain tensor file")
    assert "Traceback" not in broken.stderr + evil.stderr


def test_mirasol_debug_env_shows_the_traceback(files):
    result = run_module("evaluate", "--run", files["not_a_run"], "--manifest", files["good"], "--out",
                        files["dir"] / "e.json", env={"MIRASOL_DEBUG": "1"})
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr
    assert "FileNotFoundError" in result.stderr and "config.json not found" in result.stderr


def test_options_may_stand_between_positionals(capsys):
    """`ask VIDEO --whole "question?"` and overrides on both sides of `--resume` parse as meant
    (argparse alone reads positionals only where they stand together)."""
    from mirasol.cli import build_parser, parse_args

    parser = build_parser()
    args = parse_args(parser, ["ask", "--run", "r", "v.mp4", "--whole", "what is it?"])
    assert (args.video, args.question, args.whole, args.command) == ("v.mp4", "what is it?", True, "ask")
    args = parse_args(parser, ["ask", "--run", "r", "v.mp4", "what is it?", "--whole"])  # the usual order
    assert (args.video, args.question, args.whole) == ("v.mp4", "what is it?", True)
    args = parse_args(parser, ["ask", "v.mp4", "--run", "r"])
    assert (args.video, args.question, args.run) == ("v.mp4", None, "r")
    args = parse_args(parser, ["--debug", "train", "--config", "tiny", "train.lr=1e-3", "--resume",
                               "model.num_chunks=8", "--out", "o", "--train", "t.jsonl"])
    assert args.overrides == ["train.lr=1e-3", "model.num_chunks=8"] and args.resume and args.debug
    with pytest.raises(SystemExit):  # still an error: one word too many
        parse_args(parser, ["ask", "--run", "r", "v.mp4", "--whole", "what is it?", "extra"])
    assert "mirasol ask: error: unrecognized arguments: extra" in capsys.readouterr().err
