import pytest
import torch

from mirasol import MirasolConfig


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def media_batch(cfg: MirasolConfig, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(batch, cfg.num_frames, 3, cfg.image_size, cfg.image_size, generator=g)
    audio = torch.randn(batch, cfg.n_mels, cfg.audio_frames, generator=g)
    return video, audio


def kill_at_checkpoint(argv: list[str], out, env: dict, step: int = 2, last: int = 6) -> None:
    """Start `python -m mirasol.cli *argv` and kill -9 it as soon as its step-`step` checkpoint is on
    disk in `out`; fail if it never got there, or finished (reached step `last`) before the kill."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    checkpoints = Path(out) / "checkpoints"
    proc = subprocess.Popen([sys.executable, "-m", "mirasol.cli", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while not (checkpoints / f"step_{step:08d}").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (checkpoints / f"step_{step:08d}").exists()
    assert not (checkpoints / f"step_{last:08d}").exists(), "the run finished before it could be killed"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """(root, data folder, run) of a tiny run trained for four steps through the CLI on 20 synthetic
    clips, its test split evaluated into RUN/eval/report.json (+ predictions.jsonl)."""
    from mirasol.cli import main as cli

    root = tmp_path_factory.mktemp("trained")
    data, run = root / "data", root / "run"
    assert cli(["synth", "--out", str(data), "--num", "20", "--seed", "5"]) == 0
    assert cli(["train", "--config", "tiny", "--train", str(data / "train.jsonl"), "--out", str(run),
                "train.max_steps=4", "train.batch_size=8", "train.eval_every=0", "train.warmup_steps=1",
                "train.plots=false", "train.lr=1e-2"]) == 0  # (a high rate: free answers that are not empty)
    assert cli(["evaluate", "--run", str(run), "--manifest", str(data / "test.jsonl"),
                "--out", str(run / "eval" / "report.json")]) == 0
    return root, data, run
