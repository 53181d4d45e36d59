"""`mirasol ask --whole / --at`: stream a video of any length through a run's model, through the CLI.
The run is an untrained tiny model (its answers are arbitrary but deterministic), so the tests
check the plumbing: what is streamed, what is printed, and that streaming answers what the batch
path answers when the video fits in the model's clip."""

from __future__ import annotations

import re

import pytest

from mirasol.ask import parse_times
from mirasol.cli import main as cli

from conftest import make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    texts = ["what is cooked?", "a pancake", "what shape is the object?", "a red circle", "describe the video"]
    return make_run(tmp_path_factory.mktemp("run"), texts)


def test_whole_streams_every_chunk_of_every_container(run, capsys, media_file):
    assert cli(["ask", "--run", str(run), str(media_file.path), "what is cooked?", "--whole"]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 1  # one answer
    chunks = media_file.facts.tiny_chunks()
    consumed = [int(n) for n in re.findall(r"chunks (\d+)", err)]
    assert consumed == list(range(1, chunks + 1))  # progress after every chunk
    assert "note:" not in err


@pytest.mark.parametrize("role", ["fits", "longer"])
def test_whole_answers_as_the_batch_path_when_the_video_fits(run, capsys, media, role):
    """The tiny model's clip is 4 s: a 2 s file streamed gives the batch answer (padding chunks are
    masked there). A 6.6 s file: the batch path sees 0-4 s, so compare with --end 4."""
    path = str(media.path(role))
    assert cli(["ask", "--run", str(run), path, "what is cooked?"]) == 0
    batch = capsys.readouterr().out
    assert cli(["ask", "--run", str(run), path, "what is cooked?", "--whole", "--end", "4"]) == 0
    assert capsys.readouterr().out == batch


def test_at_answers_after_each_second(run, capsys, media):
    path = str(media.path("long"))
    end = f"{media.facts('long').seconds:.1f}"  # 10.4 s
    assert cli(["ask", "--run", str(run), path, "what is cooked?", "--at", "2,5,30"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.split("]")[0] for line in lines] == ["[2 s", "[5 s", f"[{end} s"]  # 30 s is past the end
    assert f"ends at {end} s" in err
    assert cli(["ask", "--run", str(run), path, "--at", "3", "--window", "2"]) == 0  # caption, windowed
    out, err = capsys.readouterr()
    assert out.startswith("[3 s] ") and out.count("\n") == 1
    assert re.findall(r"chunks (\d+)", err)[-1] == "3"  # stops reading after the last --at second


def test_bad_arguments(run, capsys, generated_media):
    path = str(generated_media.path("fits"))
    assert cli(["ask", "--run", str(run), path, "q?", "--at", "5,2"]) == 2
    assert "--at" in capsys.readouterr().err
    assert cli(["ask", "--run", str(run), path, "q?", "--window", "2"]) == 2
    assert "--whole" in capsys.readouterr().err
    assert cli(["ask", "--run", str(run), path, "q?", "--whole", "--window", "0"]) == 2
    assert "--window takes" in capsys.readouterr().err
    with pytest.raises(ValueError):
        parse_times("abc")
