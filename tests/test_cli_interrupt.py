"""Ctrl-C during any command ends with one line on stderr, saying what was interrupted and how to
go on, and exit status 130; no KeyboardInterrupt traceback. `--debug` and MIRASOL_DEBUG=1 show it.

The messages are checked through `mirasol.cli.main` with the command's handler replaced by one
that raises KeyboardInterrupt; two real commands get a real SIGINT, sent as a terminal sends
Ctrl-C: to the whole process group, worker processes included."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mirasol import cli
from mirasol.cli import main


def interrupt(monkeypatch, command: str) -> None:
    def handler(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, command, (handler, cli.COMMANDS[command][1]))


def run_main(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    return lines[0]


def test_interrupted_train_names_the_checkpoint_and_the_resume_command(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    for step in (5, 10):
        (run / "checkpoints" / f"step_{step:08d}").mkdir(parents=True)
    interrupt(monkeypatch, "train")
    code, out, err = run_main(["train", "--config", "tiny", "--train", tmp_path / "t.jsonl", "--out", run,
                               "train.lr=1e-3"], capsys)
    assert code == 130 and out == ""
    line = one_line(err)
    assert line.startswith("mirasol train: interrupted")
    assert str(run / "checkpoints" / "step_00000010") in line
    assert (f"`mirasol train --config tiny --train {tmp_path / 't.jsonl'} --out {run} train.lr=1e-3 --resume`"
            in line)


def test_interrupted_train_without_checkpoint_must_start_again(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "tokenizer.json").write_text("{}")  # written before the first step
    interrupt(monkeypatch, "train")
    code, _, err = run_main(["train", "--config", "tiny", "--train", "t.jsonl", "--val", "v.jsonl", "--out", run],
                            capsys)
    assert code == 130
    line = one_line(err)
    assert "no checkpoint was written yet, so the run must start again" in line
    assert f"delete {run}" in line
    assert "`mirasol train --config tiny --train t.jsonl --val v.jsonl --out " in line and "--resume" not in line


@pytest.mark.parametrize("argv, expected", [
    (["prepare", "--manifest", "m.jsonl", "--out", "CACHE"],
     "mirasol prepare: interrupted; the cache CACHE keeps every clip already stored: run the same command again "
     "to go on"),
    (["evaluate", "--run", "r", "--manifest", "m.jsonl", "--out", "e.json"],
     "the clip cache keeps every clip already stored: run the same command again to go on"),
    (["quickstart", "--out", "QS"], "mirasol quickstart: interrupted; the dataset, clip cache and checkpoints in QS"),
    (["synth", "--out", "d"], "mirasol synth: interrupted before it finished: run the same command again"),
    (["ask", "--run", "r", "v.mp4"], "mirasol ask: interrupted"),
    (["bench", "step"], "mirasol bench: interrupted"),
    (["convert", "--format", "ave", "--annotations", "a.txt", "--videos", "v", "--out", "m.jsonl"],
     "mirasol convert: interrupted"),
    (["consolidate", "ckpt"], "mirasol consolidate: interrupted"),
])
def test_every_command_ends_in_one_line(argv, expected, monkeypatch, capsys):
    interrupt(monkeypatch, argv[0])
    code, _, err = run_main(argv, capsys)
    assert code == 130
    assert expected in one_line(err)


def test_debug_keeps_the_traceback(monkeypatch):
    interrupt(monkeypatch, "synth")
    with pytest.raises(KeyboardInterrupt):
        main(["synth", "--out", "d", "--debug"])
    monkeypatch.setenv("MIRASOL_DEBUG", "1")
    with pytest.raises(KeyboardInterrupt):
        main(["synth", "--out", "d"])


def ctrl_c(args, ready, timeout=120.0) -> subprocess.CompletedProcess:
    """Run `python -m mirasol.cli ARGS` in a process group of its own; once ready() holds, send
    SIGINT to the whole group, as a terminal's Ctrl-C does."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    # SIGINT back to its default in the child: a runner that started the tests in the background
    # (`cmd &` without job control) passes SIGINT on as ignored, which no terminal would
    proc = subprocess.Popen([sys.executable, "-m", "mirasol.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the command ended before it could be interrupted"
    time.sleep(0.5)  # well inside the work
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_ctrl_c_during_synth(tmp_path):
    out = tmp_path / "world"
    result = ctrl_c(["synth", "--out", out, "--num", 3000],
                    ready=lambda: (out / "clips").is_dir() and len(list((out / "clips").glob("*.mp4"))) >= 16)
    assert result.returncode == 130, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == ("mirasol synth: interrupted before it finished: run the same "
                                                       "command again to start it over")
    assert not (out / "world.json").exists()


def test_ctrl_c_during_prepare_keeps_the_cache(tmp_path):
    """prepare decodes in a pool of worker processes, which also get the SIGINT: they must stay
    quiet and leave the parent to stop them and print its line."""
    from mirasol.corpora.synth import synthesize

    world = synthesize(tmp_path / "world", num=3, progress=False)
    video = Path(world["manifests"]["train"]).parent / json.loads(
        Path(world["manifests"]["train"]).read_text().splitlines()[0])["video"]
    manifest = tmp_path / "windows.jsonl"  # one video, 4000 windows: 4000 clips to decode
    manifest.write_text("".join(json.dumps({"id": f"w{i}", "video": str(video), "start": i * 1e-4, "end": 3.0,
                                            "task": "caption", "answer": "a clip"}) + "\n" for i in range(4000)))
    cache = tmp_path / "cache"
    index = cache / "index.jsonl"
    result = ctrl_c(["prepare", "--manifest", manifest, "--out", cache, "--workers", 2, "--store", "raw"],
                    ready=lambda: index.exists() and index.read_text().count("\n") >= 20)
    assert result.returncode == 130, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == (f"mirasol prepare: interrupted; the cache {cache} keeps "
                                                       "every clip already stored: run the same command again to "
                                                       "go on")
    assert 20 <= index.read_text().count("\n") < 4000  # what was stored stays
