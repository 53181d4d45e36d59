"""Fixtures and helpers shared by the test files.

Media: `generated_media` (written once per session, see media_fixtures.py), `media` (every source:
the generated files, and the real samples too where MIRASOL_SAMPLES is set) and `media_file` (each
decodable file of each source, one test per file)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import media_fixtures
from mirasol import MirasolConfig

# The time limit of a test marked `slow` (the default limit, for the others, is in pyproject.toml).
SLOW_TIMEOUT_S = 1800

# Runs of the command line in a subprocess: one CPU thread and no GPU, so that equalities between
# runs are those of the CPU's fp32 kernels on any machine.
CPU_RUN = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def pytest_configure(config):
    # pytest-xdist workers share the cores: each gets its part, or torch's default (every core per
    # worker) oversubscribes the machine and the tests that keep pace with a live stream fall behind it.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))


def tiny(**overrides) -> MirasolConfig:
    return MirasolConfig.preset("tiny", **overrides)


def media_batch(cfg: MirasolConfig, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(batch, cfg.num_frames, 3, cfg.image_size, cfg.image_size, generator=g)
    audio = torch.randn(batch, cfg.n_mels, cfg.audio_frames, generator=g)
    return video, audio


def answer_batch(cfg: MirasolConfig, answers: list[list[int]], prompt=(1, 40, 41, 3)):
    """(ids, labels) of rows `prompt + answer + eos`, right-padded with 0; only the answers and their
    eos are labelled."""
    from mirasol.model import IGNORE_INDEX

    seqs = [list(prompt) + a + [cfg.eos_token_id] for a in answers]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
    labels = torch.full_like(ids, IGNORE_INDEX)
    for i, s in enumerate(seqs):
        labels[i, len(prompt): len(s)] = ids[i, len(prompt): len(s)]
    return ids, labels


# ------------------------------------------------------------------------------------------------
# Media files

@pytest.fixture(scope="session")
def generated_media(tmp_path_factory) -> media_fixtures.MediaSet:
    return media_fixtures.generate(tmp_path_factory.mktemp("generated"))


def _media_set(request, source: str) -> media_fixtures.MediaSet:
    if source == "generated":
        return request.getfixturevalue("generated_media")
    return media_fixtures.real_media()


@pytest.fixture(scope="session", params=media_fixtures.sources())
def media(request) -> media_fixtures.MediaSet:
    """One source of media files by role; a test that uses it runs once per source."""
    return _media_set(request, request.param)


@pytest.fixture()
def media_file(request) -> media_fixtures.MediaFile:
    """One decodable file of one source (parametrized by pytest_generate_tests below)."""
    source, name = request.param
    return _media_set(request, source).by_name[name]


def pytest_generate_tests(metafunc):
    if "media_file" in metafunc.fixturenames:
        tables = {"generated": media_fixtures.GENERATED, "real": media_fixtures.REAL}
        params = [pytest.param((source, name), id=f"{source}-{name}")
                  for source in media_fixtures.sources() for name in sorted(tables[source])]
        metafunc.parametrize("media_file", params, indirect=True)


# ------------------------------------------------------------------------------------------------
# Runs and data

def make_run(path: Path, texts: list[str], stats: dict | None = None, *, tokenizer_vocab: bool = False,
             edit=None) -> Path:
    """A run folder as `mirasol train` leaves it, with an untrained tiny model (seed 0) and a
    tokenizer trained on `texts`: answers are arbitrary but deterministic. `tokenizer_vocab`: the
    model's vocabulary is the tokenizer's (every id decodes to text); `edit(model)` changes the
    weights before they are saved."""
    from mirasol import Mirasol
    from mirasol.data.tokenizer import MirasolTokenizer
    from mirasol.run_config import load_run_config
    from mirasol.run_dir import write_run_files

    tokenizer = MirasolTokenizer.train(texts, vocab_size=300)
    config = load_run_config("tiny", [f"model.vocab_size={tokenizer.vocab_size}"] if tokenizer_vocab else [])
    write_run_files(path, config.to_dict(), tokenizer,
                    stats if stats is not None else {"labels": [], "answer_prior": {}, "num_samples": 0})
    torch.manual_seed(0)
    model = Mirasol(MirasolConfig.from_dict(config.to_dict()["model"]))
    if edit is not None:
        with torch.no_grad():
            edit(model)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """20 clips of the built-in synthetic world (seed 1), made once per test module."""
    from mirasol.corpora.synth import synthesize

    out = tmp_path_factory.mktemp("world")
    synthesize(out, num=20, seed=1)
    return out


def kill_at_checkpoint(argv: list[str], out, env: dict, step: int = 2, last: int = 6) -> None:
    """Start `python -m mirasol.cli *argv` and kill -9 it as soon as its step-`step` checkpoint is on
    disk in `out`; fail if it never got there, or finished (reached step `last`) before the kill."""
    import signal
    import subprocess
    import sys
    import time

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
