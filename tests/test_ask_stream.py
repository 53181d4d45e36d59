"""`mirasol ask --whole / --at`: stream a video of any length through a run's model, through the CLI.
The run is an untrained tiny model (its answers are arbitrary but deterministic), so the tests
check the plumbing: what is streamed, what is printed, and that streaming answers what the batch
path answers when the video fits in the model's clip."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from mirasol import Mirasol, MirasolConfig
from mirasol.ask import parse_times
from mirasol.cli import main as cli
from mirasol.data.tokenizer import MirasolTokenizer
from mirasol.run_dir import write_run_files
from mirasol.run_config import load_run_config

SAMPLES = Path(__file__).resolve().parent.parent.parent / "shared" / "samples" / "media"
LENGTHS = {"big_buck_bunny_432_433.webm": 1, "example3.mp4": 2, "flipping_a_pancake.mkv": 11, "no_duration.webm": 5,
           "one_pixel.mp4": 5, "rawvideo_part_0.mp4": 1, "test.avi": 7, "video_0.mov": 1}  # tiny chunks of 1 s (a chunk counts when real content reaches its first frame time, as in load_clip)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    texts = ["what is cooked?", "a pancake", "what shape is the object?", "a red circle", "describe the video"]
    tokenizer = MirasolTokenizer.train(texts, vocab_size=300)
    config = load_run_config("tiny")
    write_run_files(run, config.to_dict(), tokenizer, {"labels": [], "answer_prior": {}, "num_samples": 0})
    torch.manual_seed(0)
    Mirasol(MirasolConfig.from_dict(config.to_dict()["model"])).save_pretrained(run)
    return run


def sample(name):
    path = SAMPLES / name
    if not path.exists():
        pytest.skip(f"sample media folder {SAMPLES} is missing")
    return path


@pytest.mark.parametrize("name", sorted(LENGTHS))
def test_whole_streams_every_chunk_of_real_files(run, capsys, name):
    assert cli(["ask", "--run", str(run), str(sample(name)), "what is cooked?", "--whole"]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 1  # one answer
    chunks = LENGTHS[name]
    consumed = [int(n) for n in re.findall(r"chunks (\d+)", err)]
    assert consumed == list(range(1, chunks + 1))  # progress after every chunk
    assert "note:" not in err


@pytest.mark.parametrize("name", ["example3.mp4", "test.avi"])
def test_whole_answers_as_the_batch_path_when_the_video_fits(run, capsys, name):
    """The tiny model's clip is 4 s: a 2 s file streamed gives the batch answer (padding chunks are
    masked there). A 6.6 s file: the batch path sees 0-4 s, so compare with --end 4."""
    path = str(sample(name))
    assert cli(["ask", "--run", str(run), path, "what is cooked?"]) == 0
    batch = capsys.readouterr().out
    assert cli(["ask", "--run", str(run), path, "what is cooked?", "--whole", "--end", "4"]) == 0
    assert capsys.readouterr().out == batch


def test_at_answers_after_each_second(run, capsys):
    path = str(sample("flipping_a_pancake.mkv"))  # 10.4 s
    assert cli(["ask", "--run", str(run), path, "what is cooked?", "--at", "2,5,30"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.split("]")[0] for line in lines] == ["[2 s", "[5 s", "[10.4 s"]  # 30 s is past the end
    assert "ends at 10.4 s" in err
    assert cli(["ask", "--run", str(run), path, "--at", "3", "--window", "2"]) == 0  # caption, windowed
    out, err = capsys.readouterr()
    assert out.startswith("[3 s] ") and out.count("\n") == 1
    assert re.findall(r"chunks (\d+)", err)[-1] == "3"  # stops reading after the last --at second


def test_bad_arguments(run, capsys):
    path = str(sample("example3.mp4"))
    assert cli(["ask", "--run", str(run), path, "q?", "--at", "5,2"]) == 2
    assert "--at" in capsys.readouterr().err
    assert cli(["ask", "--run", str(run), path, "q?", "--window", "2"]) == 2
    assert "--whole" in capsys.readouterr().err
    assert cli(["ask", "--run", str(run), path, "q?", "--whole", "--window", "0"]) == 2
    assert "--window takes" in capsys.readouterr().err
    with pytest.raises(ValueError):
        parse_times("abc")
