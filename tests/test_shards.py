"""Sharded datasets (data/shards.py): a sample read from a shard is the file's; bad samples are
skipped and counted per shard; ranks and workers read disjoint shards in an order fixed by seed and
epoch; training from shards resumes after kill -9 on the next sample, on as many or other numbers
of processes; two torchrun "nodes" train as one."""

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CPU_RUN, kill_at_checkpoint
from mirasol.config import MirasolConfig
from mirasol.data import shards
from mirasol.data.manifest import read_manifest
from mirasol.data.tokenizer import MirasolTokenizer, tokenizer_texts

CFG = MirasolConfig.preset("tiny")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """12 synth clips (10 train, 11 questions each) and their training rows in 5 shards of 2 clips."""
    from mirasol.corpora.synth import synthesize

    out = tmp_path_factory.mktemp("world")
    synthesize(out, num=12, seed=1)
    result = shards.write_shards(read_manifest(out / "train.jsonl"), out / "shards", shard_size=2)
    assert result["clips"] == 10 and result["rows"] == 110 and len(result["shards"]) == 5
    assert result["text"] == str(out / "shards" / "shard-text.jsonl")
    return out, result["pattern"]


def tokenizer_for(world_dir: Path) -> MirasolTokenizer:
    return MirasolTokenizer.train(tokenizer_texts(read_manifest(world_dir / "train.jsonl")), vocab_size=CFG.vocab_size)


def loader(pattern, tok, batch_size=8, seed=0, rank=0, world=1, workers=0, lanes=2, state=None):
    return shards.ShardLoader(pattern, CFG, tok, 32, batch_size, seed, rank, world, workers, lanes, state)


def take(it, n):
    return [next(it) for _ in range(n)]


def same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


# --- reading and writing -------------------------------------------------------------------------
def test_a_sample_is_identical_from_a_file_and_from_a_shard(world, tmp_path):
    from mirasol.data.dataset import open_dataset, ready_clips
    from mirasol.run_config import DataConfig

    out, pattern = world
    tok = tokenizer_for(out)
    rows = read_manifest(out / "train.jsonl")
    stream = loader(pattern, tok).dataset
    first = shards.shard_urls(pattern)[0]
    sample = shards.parse_sample(next(shards.raw_samples(first)))
    items = stream._items(sample, 0)
    assert [r.id for r in sample.rows] == [r.id for r in rows[:11]]  # the clip's 11 questions, in order
    for store in ("raw", "none"):
        data = DataConfig(store=store)
        cache = tmp_path / store
        ready_clips([out / "train.jsonl"], cache, data, CFG, progress=False)
        dataset = open_dataset(rows, cache, data, CFG, tok)
        for i, item in enumerate(items):
            ref = dataset[i]
            for key in ("video", "audio", "chunk_mask", "input_ids", "labels", "prompt_ids"):
                assert torch.equal(torch.as_tensor(item[key]), torch.as_tensor(ref[key])), (store, key)
    # the rows as a manifest gives them: text pass and unpacking
    text_rows, skipped = shards.read_rows(pattern)
    assert skipped == {} and [r.id for r in text_rows] == [r.id for r in rows]
    assert [(r.question, r.answer, r.task, r.type) for r in text_rows] == [(r.question, r.answer, r.task, r.type)
                                                                             for r in rows]
    unpacked = read_manifest(shards.unpack(pattern, tmp_path / "unpacked"))
    assert [r.to_dict() | {"video": 0} for r in unpacked] == [r.to_dict() | {"video": 0} for r in rows]
    assert Path(unpacked[0].video).read_bytes() == Path(rows[0].video).read_bytes()


def test_shard_command_writes_shards_of_the_chosen_size(world, tmp_path):
    out, _ = world
    r = subprocess.run([sys.executable, "-m", "mirasol.cli", "shard", "--manifest", str(out / "train.jsonl"),
                        "--out", str(tmp_path / "s"), "--shard-size", "4"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "10 clips (110 rows) into 3 shards" in r.stdout and "shard-{00000..00002}.tar" in r.stdout
    names = [[m.name for m in tarfile.open(p)] for p in sorted((tmp_path / "s").glob("*.tar"))]
    assert [len(n) for n in names] == [8, 8, 4] and names[0][:2] == ["000000000.json", "000000000.mp4"]


def _bad_shard(path: Path, good_video: bytes) -> None:
    """A shard in video2dataset's layout with good and bad samples."""
    def add(tar, name, data: bytes):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(path, "w") as tar:
        add(tar, "a.mp4", good_video)  # good: a json row
        add(tar, "a.json", json.dumps({"question": "what shape?", "answer": "square"}).encode())
        add(tar, "b.mp4", b"\x00not a video" * 50)  # undecodable
        add(tar, "b.json", json.dumps({"question": "what shape?", "answer": "circle"}).encode())
        add(tar, "c.mp4", good_video)  # no text at all
        add(tar, "c.json", json.dumps({"url": "http://x", "status": "success"}).encode())
        add(tar, "d.json", json.dumps({"caption": "no video here"}).encode())  # no video file
        add(tar, "e.mp4", good_video)  # good: video2dataset's caption file
        add(tar, "e.json", json.dumps({"url": "http://y", "status": "success"}).encode())
        add(tar, "e.txt", b"a square moves up")
        add(tar, "f.mp4", good_video)  # unreadable json
        add(tar, "f.json", b"{not json")


def test_bad_samples_are_skipped_and_counted_per_shard(world, tmp_path):
    out, _ = world
    video = Path(read_manifest(out / "train.jsonl")[0].video).read_bytes()
    one, two = tmp_path / "bad-0.tar", tmp_path / "bad-1.tar"
    _bad_shard(one, video)
    _bad_shard(two, video)
    pattern = str(tmp_path / "bad-{0..1}.tar")
    rows, skipped = shards.read_rows(pattern)  # the text pass cannot see undecodable videos
    assert [(r.task, r.answer) for r in rows] == [("qa", "square"), ("qa", "circle"),
                                                  ("caption", "a square moves up")] * 2
    assert {u: sorted(k) for u, k in skipped.items()} == {str(one): ["c", "d", "f"], str(two): ["c", "d", "f"]}
    tok = tokenizer_for(out)
    lo = loader(pattern, tok, batch_size=2, lanes=1)
    batches = take(iter(lo), 3)  # 2 good rows per shard
    assert all(b["input_ids"].shape[0] == 2 for b in batches)
    assert lo.skipped_counts() == {str(one): 4, str(two): 4}
    assert "decoding failed" in lo.skipped[str(one)]["b"] or "cannot open" in lo.skipped[str(one)]["b"]
    assert lo.state_dict()["skipped"] == lo.skipped
    with pytest.raises(shards.ShardError, match="does not exist"):
        shards.shard_urls(str(tmp_path / "bad-{0..2}.tar"))


def _texts(rows):
    return [(r.id, r.task, r.question, r.answer, r.type, r.start, r.end) for r in rows]


def test_the_text_index_holds_every_shards_rows(world, tmp_path):
    from mirasol.cli import main

    out, pattern = world
    rows = shards.read_rows(pattern)[0]
    assert len(rows) == 110
    assert _texts(shards.read_text_index(str(out / "shards" / "shard-text.jsonl"))) == _texts(rows)
    # shards written elsewhere: `mirasol shard --text-of` reads them once and writes the same index
    assert main(["shard", "--text-of", pattern, "--out", str(tmp_path), "--prefix", "v2d"]) == 0
    assert _texts(shards.read_text_index(str(tmp_path / "v2d-text.jsonl"))) == _texts(rows)
    assert main(["shard", "--out", str(tmp_path)]) == 2  # neither --manifest nor --text-of
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "task": "qa", "question": "q?", "answer": "x"}\n{"id": 3\n')
    with pytest.raises(Exception, match=r"bad.jsonl:2: not valid JSON"):
        shards.read_text_index(str(tmp_path / "bad.jsonl"))
    with pytest.raises(shards.ShardError, match="'data.shard_text': .*nothing.jsonl does not exist"):
        shards.read_text_index(str(tmp_path / "nothing.jsonl"))


# --- splitting and order -------------------------------------------------------------------------
def test_lanes_split_the_shards_and_the_order_is_a_function_of_seed_and_epoch(world):
    out, pattern = world
    urls = shards.shard_urls(pattern)
    for epoch in range(3):
        parts = [shards.lane_shards(urls, lane, 4, seed=0, epoch=epoch) for lane in range(4)]
        assert sorted(u for p in parts for u in p) == sorted(urls)  # each shard once per epoch, in one lane
    assert shards.lane_shards(urls, 0, 1, 0, 0) == shards.lane_shards(urls, 0, 1, 0, 0)
    orders = {tuple(shards.lane_shards(urls, 0, 1, seed, epoch)) for seed in (0, 1) for epoch in (0, 1)}
    assert len(orders) == 4
    tok = tokenizer_for(out)
    a, b, c = (take(iter(loader(pattern, tok, seed=s)), 6) for s in (0, 0, 1))
    same_batches(a, b)
    assert not all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, c))


def test_the_shuffle_buffer_permutes_within_its_bound_and_repeats_with_its_seed():
    def source(n, taken, damaged_after=None):
        for i in range(n):
            if i == damaged_after:
                raise shards.ShardError("unreadable tar data")
            taken.append(i)
            yield {"__key__": i}

    orders = {}
    for size in (0, 1, 4, 50):
        for seed in (7, 8):
            taken, out = [], []
            for sample in shards.shuffled(source(30, taken), size, np.random.default_rng(seed)):
                out.append(sample["__key__"])
                assert len(taken) - len(out) <= size  # never more than `size` samples held
            assert sorted(out) == list(range(30))
            orders[size, seed] = out
    assert orders[0, 7] == orders[1, 7] == list(range(30))  # 0 and 1: the written order
    for size in (4, 50):
        assert orders[size, 7] != list(range(30)) and orders[size, 7] != orders[size, 8]
        again = [s["__key__"] for s in shards.shuffled(source(30, []), size, np.random.default_rng(7))]
        assert again == orders[size, 7]
    assert max(abs(p - i) for i, p in enumerate(orders[50, 7])) > 10  # a buffer larger than the shard: any order
    # damaged data after 10 samples: the 10 held ones come out, then the error
    out = []
    with pytest.raises(shards.ShardError):
        for sample in shards.shuffled(source(30, [], damaged_after=10), 4, np.random.default_rng(0)):
            out.append(sample["__key__"])
    assert sorted(out) == list(range(10))


def test_a_lane_shuffles_inside_its_shards_and_resumes_mid_shard(world, tmp_path):
    out, _ = world
    pattern = shards.write_shards(read_manifest(out / "train.jsonl"), tmp_path / "fives", shard_size=5)["pattern"]
    tok = tokenizer_for(out)

    def clips(batches):  # each batch of 11 rows is one clip's questions
        return [b["video"][0] for b in batches]

    in_order = take(iter(loader(pattern, tok, batch_size=11, lanes=1)), 10)  # one epoch: 2 shards of 5
    shuffled = take(iter(shards.ShardLoader(pattern, CFG, tok, 32, 11, 0, lanes=1, shuffle=16)), 10)
    for batch in in_order + shuffled:
        assert all(torch.equal(batch["video"][0], v) for v in batch["video"])

    def order(seen):  # each shuffled clip's place in the written order
        return [next(i for i, c in enumerate(clips(in_order)) if torch.equal(c, v)) for v in clips(seen)]

    perm = order(shuffled)
    assert sorted(perm) == list(range(10)) and perm != list(range(10))
    assert {p // 5 for p in perm[:5]} == {perm[0] // 5}  # still one shard after the other

    # batches of 8 rows: positions fall inside a shard and inside a clip's rows
    full = take(iter(shards.ShardLoader(pattern, CFG, tok, 32, 8, 0, lanes=1, shuffle=16)), 12)
    first = shards.ShardLoader(pattern, CFG, tok, 32, 8, 0, lanes=1, shuffle=16)
    it = iter(first)
    take(it, 3)
    state = first.state_dict()
    assert state["positions"] == [[0, 0, 2, 2]] and state["shuffle"] == 16  # 24 rows = 2 clips + 2 rows
    resumed = shards.ShardLoader(pattern, CFG, tok, 32, 8, 0, lanes=1, state=state, shuffle=0)  # the saved one wins
    same_batches(full[3:], take(iter(resumed), 9))


def test_shard_shuffle_must_be_a_count():
    from mirasol.config import ConfigError
    from mirasol.run_config import load_run_config

    assert load_run_config("tiny", ["data.shard_shuffle=0"]).data.shard_shuffle == 0
    with pytest.raises(ConfigError, match="'data.shard_shuffle': must be an integer >= 0, got -1"):
        load_run_config("tiny", ["data.shard_shuffle=-1"])


def _rows_seen(pattern, tok, rank, world, worker, workers, steps):
    """The clips a (rank, worker) pair reads in its first steps, driving its dataset as a worker."""
    lo = loader(pattern, tok, rank=rank, world=world, lanes=4)
    original = torch.utils.data.get_worker_info
    torch.utils.data.get_worker_info = lambda: type("W", (), {"id": worker, "num_workers": workers})()
    try:
        it = iter(lo.dataset)
        parts = take(it, steps)
    finally:
        torch.utils.data.get_worker_info = original
    return {row["clip"] for p in parts for _, rows, _ in p["lanes"] for row in rows}


def test_ranks_and_workers_read_disjoint_shards(world):
    out, pattern = world
    tok = tokenizer_for(out)
    seen = {(r, w): _rows_seen(pattern, tok, r, 2, w, 2, steps=2) for r in range(2) for w in range(2)}
    shards_of = {k: {clip.split("#")[0] for clip in v} for k, v in seen.items()}
    assert all(shards_of.values())
    keys = list(shards_of)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert not shards_of[a] & shards_of[b], (a, b)


def test_batches_do_not_depend_on_processes_or_workers(world):
    out, pattern = world
    tok = tokenizer_for(out)
    one = take(iter(loader(pattern, tok, lanes=4)), 5)
    with_workers = take(iter(loader(pattern, tok, lanes=4, workers=2)), 5)
    same_batches(one, with_workers)
    halves = [take(iter(loader(pattern, tok, rank=r, world=2, lanes=4)), 5) for r in range(2)]
    for b, h0, h1 in zip(one, *halves):
        assert torch.equal(b["input_ids"], torch.cat([h0["input_ids"], h1["input_ids"]]))
        assert torch.equal(b["video"], torch.cat([h0["video"], h1["video"]]))


def test_a_saved_position_continues_with_the_next_rows(world):
    out, pattern = world
    tok = tokenizer_for(out)
    full = take(iter(loader(pattern, tok, lanes=2)), 20)  # past the first epoch of both lanes (66 and 44 rows)
    first = loader(pattern, tok, lanes=2)
    it = iter(first)
    take(it, 7)
    state = first.state_dict()
    # 28 rows a lane = 2 clips of 11 rows (shard 0 of the lane) + 6: epoch 0, shard 1, sample 0, row 6
    assert state["positions"] == [[0, 1, 0, 6], [0, 1, 0, 6]]
    again = take(iter(loader(pattern, tok, lanes=99, state=state)), 13)  # the saved lanes win
    same_batches(full[7:], again)
    halves = [take(iter(loader(pattern, tok, rank=r, world=2, state=state)), 13) for r in range(2)]
    for b, h0, h1 in zip(full[7:], *halves):
        assert torch.equal(b["input_ids"], torch.cat([h0["input_ids"], h1["input_ids"]]))


# --- training: kill -9 and resume, other process counts, two nodes ------------------------------------
TRAIN = ["train", "--config", "tiny", "train.batch_size=8", "train.max_steps=6", "train.save_every=2",
         "train.eval_every=0", "train.log_every=1", "train.warmup_steps=2", "train.plots=false",
         "model.mask_ratio=0", "model.latent_loss_weight=0", "data.shard_lanes=2"]
# For 1 against 2 processes: masks are random per process, and the latent loss is a mean over each
# process's clips (exact only when both hold as many); the text loss is token-weighted, exact under any split.


def run_cli(*args, env=None):
    env = {**os.environ, **CPU_RUN, **(env or {})}
    return subprocess.run([sys.executable, "-m", "mirasol.cli", *args], capture_output=True, text=True, env=env)


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def trace(prefix: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in Path(f"{prefix}.rank{rank}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(world, tmp_path_factory):
    """An uninterrupted one-process run from the shards (validation too, unpacked); its batches traced."""
    out, pattern = world
    run = tmp_path_factory.mktemp("full") / "run"
    val = shards.write_shards(read_manifest(out / "val.jsonl"), run.parent / "val", shard_size=4)["pattern"]
    r = run_cli(*TRAIN, "--train", pattern, "--val", val, "--out", str(run),
                env={"MIRASOL_SHARD_TRACE": str(run) + "-trace"})
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert summary["train_samples"] == 110 and summary["val_samples"] == 11 and summary["train_skipped"] == 0
    state = torch.load(run / "checkpoints" / "step_00000006" / "train_state.pt", weights_only=True)
    assert state["loader"]["shuffle"] == 16  # data.shard_shuffle's default reached the loader
    return run, trace(Path(str(run) + "-trace"), 0), val  # (the tokenizer is trained on train + val rows)


def test_the_first_start_reads_the_text_index_instead_of_every_shard(world, full_run, tmp_path):
    out, pattern = world
    run, _, val = full_run
    missing = run_cli(*TRAIN, "--train", pattern, "--out", str(tmp_path / "r0"), "data.shard_text=/no/such.jsonl")
    assert missing.returncode == 2 and not (tmp_path / "r0").exists()
    assert "'data.shard_text': /no/such.jsonl does not exist" in missing.stderr
    # an index whose first row's answer differs from the shard's: the run's answers come from the index
    lines = (out / "shards" / "shard-text.jsonl").read_text().splitlines()
    lines[0] = json.dumps({**json.loads(lines[0]), "answer": "zebra"})
    (tmp_path / "index.jsonl").write_text("\n".join(lines) + "\n")
    r = run_cli(*TRAIN, "--train", pattern, "--val", val, "--out", str(tmp_path / "r1"), "train.max_steps=2",
                f"data.shard_text={tmp_path / 'index.jsonl'}")
    assert r.returncode == 0, r.stderr[-3000:]
    stats = json.loads((tmp_path / "r1" / "train_stats.json").read_text())
    before = json.loads((run / "train_stats.json").read_text())
    family = json.loads(lines[0]).get("type")
    assert "zebra" in stats["answers_by_family"][family] and "zebra" not in before["answers_by_family"][family]
    assert stats["num_samples"] == before["num_samples"] == 110


def _assert_same_losses(a: dict, b: dict, rel: float) -> None:
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=rel, abs=1e-7), step


@pytest.mark.slow
def test_a_killed_run_resumes_on_the_next_sample_on_one_or_two_processes(world, full_run, tmp_path):
    import shutil

    out, pattern = world
    full, full_trace, val = full_run
    killed = tmp_path / "killed"
    env = {**os.environ, **CPU_RUN}
    kill_at_checkpoint([*TRAIN, "data.workers=2", "--train", pattern, "--val", val, "--out", str(killed)], killed, env)
    for name in os.listdir(killed / "checkpoints"):  # as if it died right after the checkpoint of step 2
        if name != "step_00000002":
            shutil.rmtree(killed / "checkpoints" / name)
    state = torch.load(killed / "checkpoints" / "step_00000002" / "train_state.pt", weights_only=True)
    assert state["loader"]["positions"] == [[0, 0, 0, 8], [0, 0, 0, 8]]  # mid-epoch, mid-clip: row 8 of clip 1
    shutil.copytree(killed, tmp_path / "killed2")

    prefix = tmp_path / "resumed-trace"
    r = run_cli(*TRAIN, "data.workers=1", "--train", pattern, "--val", val, "--out", str(killed), "--resume",
                env={"MIRASOL_SHARD_TRACE": str(prefix)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert trace(prefix, 0) == full_trace[2:]  # the same next sample, and the same ones after it
    _assert_same_losses(losses(full), losses(killed), rel=1e-6)

    # on two processes: each takes one lane (its contiguous half of every global batch)
    prefix = tmp_path / "two-trace"
    two = tmp_path / "killed2"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "mirasol.cli", *TRAIN, "--train", pattern, "--val", val, "--out", str(two), "--resume"],
                       capture_output=True, text=True, env={**env, "MIRASOL_SHARD_TRACE": str(prefix)})
    assert r.returncode == 0, r.stderr[-3000:]
    halves = [trace(prefix, rank) for rank in range(2)]
    assert [a["ids"] + b["ids"] for a, b in zip(*halves)] == [t["ids"] for t in full_trace[2:]]
    _assert_same_losses(losses(full), losses(two), rel=1e-4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_torchrun_nodes_read_disjoint_samples_and_match_one_node(world, full_run, tmp_path):
    out, pattern = world
    full, full_trace, val = full_run
    run, prefix, port = tmp_path / "two-nodes", tmp_path / "nodes-trace", _free_port()
    env = {**os.environ, **CPU_RUN, "MIRASOL_SHARD_TRACE": str(prefix)}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank",
                               str(node), "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port",
                               str(port), "-m", "mirasol.cli", *TRAIN, "--train", pattern, "--val", val, "--out", str(run)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for node in range(2)]
    results = [n.communicate(timeout=600) for n in nodes]
    for n, (_, err) in zip(nodes, results):
        assert n.returncode == 0, err[-3000:]
    seen = [trace(prefix, rank) for rank in range(2)]
    ids = [{i for step in s for i in step["ids"]} for s in seen]
    shard_sets = [{c.split("#")[0] for step in s for c in step["clips"]} for s in seen]
    assert ids[0] and ids[1] and not ids[0] & ids[1]
    assert not shard_sets[0] & shard_sets[1]  # each node read its own shards
    assert [a["ids"] + b["ids"] for a, b in zip(*seen)] == [t["ids"] for t in full_trace]  # the same global batches
    _assert_same_losses(losses(full), losses(run), rel=1e-4)


@pytest.mark.slow
def test_evaluate_reads_shards_as_it_reads_the_manifest(world, full_run, tmp_path):
    from mirasol.eval.evaluate import evaluate

    out, _ = world
    run, _, _ = full_run
    test = shards.write_shards(read_manifest(out / "test.jsonl"), tmp_path / "test", shard_size=1)["pattern"]
    a = evaluate(run, out / "test.jsonl", tmp_path / "a" / "report.json", progress=False)
    b = evaluate(run, test, tmp_path / "b" / "report.json", progress=False)
    assert b["n"] == a["n"] == 11 and b["accuracy"] == a["accuracy"] and b["by_type"] == a["by_type"]
    pa, pb = ((tmp_path / d / "predictions.jsonl").read_text().splitlines() for d in "ab")
    assert [json.loads(x)["prediction"] for x in pa] == [json.loads(x)["prediction"] for x in pb]
