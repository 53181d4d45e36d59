"""`mirasol watch`: live sources decoded forward (media/live.py) and answered as they play (watch.py).

The run is an untrained tiny model: its answers are arbitrary but deterministic, so these tests
check what is decoded, when it is answered and how a source ends. Sources are long-world clips
written here: a finished file, a file grown by a writer thread at real time, an FFmpeg UDP stream
(`ffmpeg -re`), and TCP servers that stall or die mid-stream."""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from media_fixtures import remux
from mirasol import Mirasol, MirasolConfig
from mirasol.cli import main as cli
from mirasol.corpora.long_world import plan_long, render_clip, synthesize_long
from mirasol.data.tokenizer import MirasolTokenizer
from mirasol.media.chunk_reader import iter_chunks
from mirasol.media.live import live_chunks, source_kind
from mirasol.run_config import load_run_config
from mirasol.run_dir import write_run_files
from mirasol.watch import EXIT_ENDED, EXIT_NO_AUDIO, EXIT_STALLED, parse_when, watch
from serve_testing import free_port

SECONDS = 12
QUESTION = "what color is the object?"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    tokenizer = MirasolTokenizer.train([QUESTION, "red", "green", "blue", "yellow", "has the flash happened?"],
                                       vocab_size=300)
    config = load_run_config("tiny")
    write_run_files(run, config.to_dict(), tokenizer, {"labels": [], "answer_prior": {}, "num_samples": 0})
    torch.manual_seed(0)
    Mirasol(MirasolConfig.from_dict(config.to_dict()["model"])).save_pretrained(run)
    return run


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(spec, mp4 path, MPEG-TS path, video-only path) of one long-world clip of SECONDS seconds."""
    folder = tmp_path_factory.mktemp("clip")
    spec = plan_long(10, 0, SECONDS)[0]
    mp4 = render_clip(spec, folder / "clip.mp4")
    remux(mp4, folder / "clip.ts", "mpegts")
    remux(mp4, folder / "silent.ts", "mpegts", audio=False)
    return spec, Path(mp4), folder / "clip.ts", folder / "silent.ts"


def tiny_cfg(run) -> MirasolConfig:
    return MirasolConfig.from_dict(json.loads((Path(run) / "config.json").read_text())["model"])


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# --- the forward decoder -------------------------------------------------------------------------

def test_live_chunks_equal_the_chunks_ask_streams(run, world):
    """Decoded forward, once, the chunks are those `ask --at` decodes chunk by chunk with seeks
    (audio up to the AAC decoder's restart after a seek). MPEG-TS, which a live stream carries,
    decodes forward to every chunk too."""
    cfg = tiny_cfg(run)
    _, mp4, ts, _ = world
    expected = list(iter_chunks(mp4, cfg))
    got = [live.chunk for live in live_chunks(str(mp4), cfg, follow=False)]
    assert [c.index for c in got] == [c.index for c in expected] == list(range(SECONDS))
    for a, b in zip(got, expected):
        assert a.start == b.start and a.valid_seconds == pytest.approx(b.valid_seconds, abs=1e-3)
        assert torch.equal(a.video, b.video)
        assert torch.allclose(a.audio, b.audio, atol=1e-3)
    streamed = [live.chunk for live in live_chunks(str(ts), cfg, follow=False)]
    assert [c.index for c in streamed] == list(range(SECONDS))
    # the same pictures: the TS muxer only shifted the timeline by the audio's priming (64 ms)
    assert all((a.video - b.video).abs().mean() < 0.02 for a, b in zip(streamed, got))


def test_source_kinds(world, tmp_path):
    _, mp4, ts, _ = world
    assert source_kind("udp://127.0.0.1:1234") == "network"
    assert source_kind("/dev/video0") == "device"
    assert source_kind(str(mp4)) == "file"  # an MP4's index is written last: never followed unasked
    assert source_kind(str(ts), follow=True) == "growing"
    with pytest.raises(Exception, match="unsupported scheme 'ftp'"):
        source_kind("ftp://host/x.ts")


# --- watch ---------------------------------------------------------------------------------------

def test_watch_answers_at_every_point_as_ask_at_does(run, world, capsys):
    _, mp4, _, _ = world
    assert cli(["watch", "--run", str(run), str(mp4), "--ask", QUESTION, "--every", "3", "--json",
                "--no-stdin"]) == 0
    lines = json_lines(capsys.readouterr().out)
    assert [line["video_seconds"] for line in lines] == [3, 6, 9, 12]
    assert all(line["question"] == QUESTION and line["dropped"] == 0 for line in lines)
    assert cli(["ask", "--run", str(run), str(mp4), QUESTION, "--at", "3,6,9,12"]) == 0
    asked = [line.split("] ", 1)[1] if "] " in line else "" for line in capsys.readouterr().out.splitlines()]
    assert [line["answer"] for line in lines] == asked


def test_growing_file_is_followed_as_a_writer_writes_it(run, world, tmp_path):
    """A writer thread appends the first half of the MPEG-TS bytes at the clip's own pace; watch
    answers while the file is still being written, and takes it as finished once it stops growing."""
    _, _, ts, _ = world
    data = ts.read_bytes()
    growing = tmp_path / "live.ts"
    growing.write_bytes(b"")
    finished_at = []

    def writer():
        pieces = 2 * SECONDS  # half a second of the clip each
        with open(growing, "ab") as f:
            for i in range(pieces // 2):
                f.write(data[i * len(data) // pieces:(i + 1) * len(data) // pieces])
                f.flush()
                time.sleep(SECONDS / pieces)  # real time
        finished_at.append(time.time())

    threading.Thread(target=writer, daemon=True).start()
    time.sleep(0.3)
    out = io.StringIO()
    result = watch(str(run), str(growing), asks=[QUESTION], every=2, follow=None, stall_timeout=1.0,
                   as_json=True, out=out)
    assert result.status == 0 and result.dropped == 0
    lines = json_lines(out.getvalue())
    assert [line["video_seconds"] for line in lines][:2] == [2, 4]
    assert SECONDS / 2 - 1 <= result.video_seconds <= SECONDS / 2 + 0.5  # half the clip was written
    assert lines[0]["wall_time"] < finished_at[0]  # answered while the file grew, not at its end


def test_udp_stream_played_by_ffmpeg(run, world, capsys):
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (apt-get install ffmpeg); scripts/test.sh installs it where it can")
    _, mp4, _, _ = world
    port = free_port(socket.SOCK_DGRAM)
    sender = subprocess.Popen(["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-i", str(mp4), "-c", "copy",
                               "-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316"], stdin=subprocess.DEVNULL)
    try:
        status = cli(["watch", "--run", str(run), f"udp://127.0.0.1:{port}", "--ask", QUESTION, "--every", "2",
                      "--until", "6", "--json", "--no-stdin", "--stall-timeout", "5"])
    finally:
        sender.kill()
        sender.wait()
    out, err = capsys.readouterr()
    assert status == 0, err
    lines = json_lines(out)
    assert [line["video_seconds"] for line in lines] == [2, 4, 6]
    assert all(line["lag_seconds"] >= 0 for line in lines)


class _TcpSource:
    """Serves the first `fraction` of a file's bytes on 127.0.0.1, then closes (dies) or goes quiet (stalls)."""

    def __init__(self, data: bytes, fraction: float, then: str):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(1)
        self.url = f"tcp://127.0.0.1:{self.server.getsockname()[1]}"
        self.data, self.fraction, self.then = data, fraction, then
        self.release = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        conn, _ = self.server.accept()
        sent, pieces = int(len(self.data) * self.fraction), 24
        for i in range(pieces):  # at three times the clip's pace
            conn.sendall(self.data[i * sent // pieces:(i + 1) * sent // pieces])
            time.sleep(SECONDS * self.fraction / pieces / 3)
        if self.then == "stall":
            self.release.wait(30)
        conn.close()
        self.server.close()


@pytest.mark.parametrize("then, status, words", [("die", EXIT_ENDED, "stream ended after"),
                                                 ("stall", EXIT_STALLED, "no data for 1 s")])
def test_a_source_that_dies_or_stalls_ends_in_one_line_and_keeps_its_answers(run, world, capsys, then, status,
                                                                              words):
    _, _, ts, _ = world
    source = _TcpSource(ts.read_bytes(), 0.75, then)
    try:
        code = cli(["watch", "--run", str(run), source.url, "--ask", QUESTION, "--every", "2", "--json",
                    "--no-stdin", "--stall-timeout", "1"])
    finally:
        source.release.set()
    out, err = capsys.readouterr()
    assert code == status
    times = [line["video_seconds"] for line in json_lines(out)]
    assert times[:3] == [2, 4, 6] and times[-1] < SECONDS  # the answers before the end are kept
    [last] = [line for line in err.splitlines() if line.startswith("mirasol watch:")]
    assert words in last and source.url in last


def test_a_source_without_audio(run, world, capsys):
    _, _, _, silent = world
    assert cli(["watch", "--run", str(run), str(silent), "--ask", QUESTION, "--no-stdin"]) == EXIT_NO_AUDIO
    out, err = capsys.readouterr()
    assert out == "" and "no audio stream" in err and "--silent" in err
    assert cli(["watch", "--run", str(run), str(silent), "--ask", QUESTION, "--every", "6", "--silent",
                "--no-stdin"]) == 0
    assert capsys.readouterr().out.count("\n") == 2


def test_when_reports_the_first_chunk_with_that_answer(run, world, monkeypatch):
    """An answerer that reads the latest chunk's pixels (the flash turns the background light
    grey for one second) stands in for a trained model: the alert lands on the flash's chunk."""
    import mirasol.watch as watch_module
    from mirasol.model.stream import MediaStream

    spec, mp4, _, _ = world
    push = MediaStream.push

    def remember(self, video, audio):
        self.last_video = video
        return push(self, video, audio)

    class FlashOracle:
        def __init__(self, *args):
            pass

        def __call__(self, session, question):
            frame = session.last_video[0, -1]  # [3, S, S] in [0, 1]
            return "yes" if float(frame[:, 0, :].median()) > 0.6 else "no"

    monkeypatch.setattr(MediaStream, "push", remember)
    monkeypatch.setattr(watch_module, "_Answerer", FlashOracle)
    out = io.StringIO()
    result = watch(str(run), str(mp4), whens=[parse_when("has the flash happened?=yes")], out=out, as_json=True)
    [alert] = json_lines(out.getvalue())
    assert alert["kind"] == "when" and alert["chunk"] == spec["flash"]
    assert (alert["chunk_start"], alert["chunk_end"]) == (spec["flash"], spec["flash"] + 1)
    assert result.status == 0


def test_typed_questions_are_answered_about_what_was_seen(run, world):
    _, mp4, _, _ = world
    out = io.StringIO()
    typed = io.StringIO("what is happening?\n\n")
    result = watch(str(run), str(mp4), realtime=True, until=2, stdin=typed, out=out, as_json=True)
    [line] = json_lines(out.getvalue())
    assert line["kind"] == "typed" and line["question"] == "what is happening?" and line["video_seconds"] <= 2
    assert result.status == 0 and result.video_seconds == 2


def test_falling_behind_a_live_source_drops_to_the_newest_chunk(run, world, monkeypatch):
    """A followed file that is already complete arrives faster than a slowed model: chunks waiting
    are dropped and counted, the newest is pushed, the last chunk is reached."""
    from mirasol.model.stream import MediaStream

    _, _, ts, _ = world
    push = MediaStream.push

    def slow(self, video, audio):
        time.sleep(0.15)
        return push(self, video, audio)

    monkeypatch.setattr(MediaStream, "push", slow)
    out = io.StringIO()
    result = watch(str(run), str(ts), asks=[QUESTION], every=1, follow=True, stall_timeout=0.5, max_behind=0.2,
                   out=out, as_json=True)
    assert result.status == 0
    assert result.dropped > 0 and result.chunks + result.dropped == SECONDS
    lines = json_lines(out.getvalue())
    assert lines[-1]["video_seconds"] == SECONDS and lines[-1]["dropped"] == result.dropped


def test_window_keeps_memory_bounded(run, world, monkeypatch):
    from mirasol.model.stream import MediaStream

    _, mp4, _, _ = world
    sizes = []
    latents = MediaStream.latents

    def spy(self):
        held = latents(self)
        sizes.append(held.shape[1])
        return held

    monkeypatch.setattr(MediaStream, "latents", spy)
    watch(str(run), str(mp4), asks=[QUESTION], every=1, window=3, out=io.StringIO())
    assert sizes == [1, 2] + [3] * (SECONDS - 2)


def test_bad_arguments(run, world, capsys):
    _, mp4, _, _ = world
    with pytest.raises(Exception, match="question=answer"):
        parse_when("no equals sign")
    assert parse_when("what color is it?=red") == ("what color is it?", "red")
    assert cli(["watch", "--run", str(run), str(mp4), "--every", "0"]) == 2
    assert "--every takes a positive number" in capsys.readouterr().err
    assert cli(["watch", "--run", str(run), str(mp4) + ".missing"]) == 2
    assert "file not found" in capsys.readouterr().err
    assert cli(["watch", "--run", str(run), str(mp4), "--when", "x"]) == 2
    assert "question=answer" in capsys.readouterr().err


def test_bench_watch_reports_real_time_factors_and_memory(tmp_path, monkeypatch):
    from mirasol.perf import bench_watch

    monkeypatch.setenv("MIRASOL_BENCH_DIR", str(tmp_path))
    result = bench_watch(presets=("tiny",), seconds=8, hour_seconds=60, repeats=1, step_batch=2, quiet=True)
    [row] = result["rows"]
    assert row["preset"] == "tiny" and row["rtf_chunks"] > 0 and row["rtf_answering"] > 0 and row["step_ms"] > 0
    memory = result["memory"]
    assert memory["video_seconds"] == 64  # the 8 s clip looped past 60 s
    assert [v for v, _ in memory["rss_kb"]] == list(range(1, 65)) and all(kb > 0 for _, kb in memory["rss_kb"])


@pytest.mark.slow
def test_when_fires_at_the_bursts_chunk_on_a_trained_run(tmp_path):
    """A tiny model trained for a few minutes on the long world's online families (rows with `at`)
    answers "has the noise burst happened yet?" from the stream: the alert lands on the chunk of
    the second the noise plays in."""
    from mirasol.run_config import load_run_config as config_for
    from mirasol.train.loop import train

    data = tmp_path / "world"
    synthesize_long(data, num=150, seconds=16, online=True, progress=False)
    cfg = config_for("tiny", ["model.num_chunks=16", "train.batch_size=16", "train.questions_per_clip=1",
                              "train.max_steps=800", "train.warmup_steps=80", "train.eval_every=0",
                              "train.plots=false", "train.save_every=800"])
    train(cfg, str(data / "train.jsonl"), None, tmp_path / "run", progress=False)
    specs = json.loads((data / "world.json").read_text())["specs"]
    fired = []
    for spec in [s for s in specs if s["split"] == "test"][:5]:
        out = io.StringIO()
        watch(str(tmp_path / "run"), str(data / "clips" / f"{spec['clip']}.mp4"),
              whens=[parse_when("has the noise burst happened yet?=yes")], out=out, as_json=True)
        alerts = json_lines(out.getvalue())
        fired.append(bool(alerts) and alerts[0]["chunk"] == spec["noise"])
    assert sum(fired) >= 4, fired
