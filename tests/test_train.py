"""Training: config validation, exact resume after a kill, multi-process equivalence, end to end."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import CPU_RUN, kill_at_checkpoint
from mirasol.config import ConfigError, MirasolConfig
from mirasol.run_config import DataConfig, TrainConfig, load_run_config
from mirasol.train.schedule import lr_factor

FAST = ["train.batch_size=8", "train.max_steps=6", "train.save_every=2", "train.eval_every=0",
        "train.log_every=1", "train.warmup_steps=2", "train.plots=false", "model.mask_ratio=0.25"]


# The training runs here are CPU runs (CPU_RUN), also on a machine with GPUs: the equalities asserted
# below (resume, 2 gloo processes against one) are those of the CPU's fp32 kernels, and a one-GPU
# machine cannot host two processes of their own.
def run_cli(*args, env=None, **kw):
    env = {**os.environ, **CPU_RUN, **(env or {})}
    return subprocess.run([sys.executable, "-m", "mirasol.cli", *args], capture_output=True, text=True, env=env, **kw)


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_config_errors_name_the_key(tmp_path):
    # ('lrate' is now closer to the 'train.lora' key than to 'lr')
    with pytest.raises(ConfigError, match="unknown config key 'train.lrr'.*did you mean 'train.lr'"):
        load_run_config("tiny", ["train.lrr=1"])
    with pytest.raises(ConfigError, match="unknown config key 'num_chunk'"):
        load_run_config("tiny", ["model.num_chunk=3"])
    with pytest.raises(ConfigError, match="batch_size=10 is not divisible by grad_accum=3"):
        load_run_config("tiny", ["train.batch_size=10", "train.grad_accum=3"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_run_config("tiny", ["lr"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  preset: tiny\n  image_size: 30\n")
    with pytest.raises(ConfigError, match="image_size=30 is not divisible by patch_size=8"):
        load_run_config(bad)
    assert load_run_config("tiny", ["model.combiner=ttm", "train.lr=3e-4"]).train.lr == 3e-4


def test_packaged_yaml_presets_load():
    for name in ("tiny", "small", "base"):
        cfg = load_run_config(name)
        assert cfg.model == cfg.model.replace()  # validated, round-trips


def test_schedule_warms_up_then_decays():
    f = [lr_factor(s, 10, 100, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))


def test_text_lr_scale_sets_the_decoder_groups_lr():
    from mirasol.model import Mirasol
    from mirasol.train.optim import param_groups as _param_groups

    model = Mirasol(MirasolConfig.preset("tiny"))
    names = {id(p): n for n, p in model.named_parameters()}
    plain = _param_groups(model, 0.05, 1e-3)
    assert [g["weight_decay"] for g in plain] == [0.05, 0.0]  # as before the key: checkpoints still load
    groups = _param_groups(model, 0.05, 1e-3, text_lr_scale=3.0)
    assert len(groups) == 4 and sum(len(g["params"]) for g in groups) == len(names)
    for group in groups:
        text = {names[id(p)].startswith("text_decoder.") for p in group["params"]}
        assert len(text) == 1
        assert group["lr"] == pytest.approx(3e-3 if text.pop() else 1e-3)
    assert load_run_config("tiny", ["train.text_lr_scale=2"]).train.text_lr_scale == 2
    with pytest.raises(ConfigError, match="train.text_lr_scale"):
        load_run_config("tiny", ["train.text_lr_scale=0"])


def test_wrong_config_fails_before_any_work(world, tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", "--config", "tiny", "--train", str(world / "train.jsonl"), "--out", str(run),
                     "model.image_size=30")
    assert result.returncode == 2 and "image_size=30" in result.stderr
    assert not run.exists()


def test_killed_run_resumes_with_identical_losses(world, tmp_path):
    args = ["train", "--config", "tiny", "--train", str(world / "train.jsonl"), *FAST]
    full = tmp_path / "full"
    assert run_cli(*args, "--out", str(full)).returncode == 0
    # kill -9 a second run once its first checkpoint is on disk, then resume it
    killed = tmp_path / "killed"
    env = {**os.environ, **CPU_RUN}
    kill_at_checkpoint([*args, "--out", str(killed)], killed, env)
    resumed = run_cli(*args, "--out", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = losses(full), losses(killed)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-6, abs=1e-7), step


def test_a_resume_may_change_only_model_settings_that_keep_every_weight():
    from mirasol.model import Mirasol
    from mirasol.run_config import RESUMABLE_MODEL_KEYS, resume_changes

    base = MirasolConfig.preset("tiny")
    shapes = {k: v.shape for k, v in Mirasol(base).state_dict().items()}
    other = {"num_chunks": 16, "clip_window": "uniform", "mask_ratio": 0.5, "latent_loss": "cosine",
             "latent_loss_weight": 0.5, "text_loss_weight": 2.0, "av_contrastive_temperature": 0.2,
             "dropout": 0.1, "missing_audio": "skip", "resize": "letterbox"}
    assert sorted(other) == sorted(RESUMABLE_MODEL_KEYS)
    for key, value in other.items():
        assert getattr(base, key) != value, key
        changed = Mirasol(base.replace(**{key: value})).state_dict()
        assert {k: v.shape for k, v in changed.items()} == shapes, key
    trained = load_run_config("tiny")
    assert resume_changes(trained, load_run_config("tiny"), "ckpt") == []
    now = load_run_config("tiny", ["model.num_chunks=32", "train.max_steps=1500"])
    assert resume_changes(trained, now, "ckpt") == [f"model.num_chunks: {trained.model.num_chunks} -> 32",
                                                     f"train.max_steps: {trained.train.max_steps} -> 1500"]
    with pytest.raises(ConfigError, match="'model.av_dim': ckpt was trained with 128, this command gives 64"):
        resume_changes(trained, load_run_config("tiny", ["model.av_dim=64"]), "ckpt")


def test_short_clips_first_then_resumed_on_long_ones(world, tmp_path):
    """The recipe for long videos (docs/streaming.md): train on short windows, then resume the same
    run over more chunks; a setting that would not fit the weights stops before any work."""
    run = tmp_path / "run"
    args = ["train", "--config", "tiny", "--train", str(world / "train.jsonl"), "--out", str(run),
            *FAST, "train.max_steps=2"]  # each phase's clips go to the default store of its chunking
    assert run_cli(*args, "model.num_chunks=2").returncode == 0
    assert json.loads((run / "config.json").read_text())["model"]["num_chunks"] == 2
    refused = run_cli(*args, "model.num_chunks=4", "train.max_steps=4", "model.av_dim=64", "--resume")
    assert refused.returncode == 2 and "'model.av_dim'" in refused.stderr, refused.stderr[-2000:]
    assert sorted(losses(run)) == [1, 2]
    longer = run_cli(*args, "model.num_chunks=4", "train.max_steps=4", "--resume")
    assert longer.returncode == 0, longer.stderr[-2000:]
    assert "model.num_chunks: 2 -> 4" in longer.stdout and "train.max_steps: 2 -> 4" in longer.stdout
    assert sorted(losses(run)) == [1, 2, 3, 4]
    assert json.loads((run / "config.json").read_text())["model"]["num_chunks"] == 4


def test_existing_run_dir_needs_resume(world, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "something").write_text("x")
    result = run_cli("train", "--config", "tiny", "--train", str(world / "train.jsonl"), "--out", str(run))
    assert result.returncode == 2 and "--resume" in result.stderr


@pytest.mark.parametrize("questions_per_clip", [1, 4])
def test_two_gloo_processes_match_one(world, tmp_path, questions_per_clip):
    args = ["train", "--config", "tiny", "--train", str(world / "train.jsonl"), *FAST,
            "train.max_steps=3", "train.grad_accum=2", "data.cache=" + str(tmp_path / "cache"),
            "model.mask_ratio=0"]  # masks are random per process; without them the two runs are the same maths
    if questions_per_clip > 1:
        # Each micro-batch encodes only its own rows' clips. The text loss is token-weighted over the
        # global batch, so it is exact under any split; the latent loss (a mean over each micro-batch's
        # clips) is not, so it is switched off here.
        args += [f"train.questions_per_clip={questions_per_clip}", "model.latent_loss_weight=0"]
    one = tmp_path / "one"
    r1 = run_cli(*args, "--out", str(one))
    assert r1.returncode == 0, r1.stderr[-2000:]
    two = tmp_path / "two"
    env = {**os.environ, **CPU_RUN}
    r2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                         "-m", "mirasol.cli", *args, "--out", str(two)], capture_output=True, text=True, env=env)
    assert r2.returncode == 0, r2.stderr[-3000:]
    a, b = losses(one), losses(two)
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), step


def test_train_help_lists_every_config_key():
    result = run_cli("train", "--help")
    assert result.returncode == 0
    text = result.stdout
    for cls in (TrainConfig, DataConfig, MirasolConfig):
        for f in dataclasses.fields(cls):
            assert f.name in text, f.name
    assert "questions_per_clip=1" in text and "packaged configs (--config NAME): base, gpt2-lora, mirasol3b, small, tiny" in text


def _without_last_checkpoint(run: Path, copy: Path) -> Path:
    """The run directory as a kill between its last two checkpoints leaves it: checkpoints are
    atomic (temp folder + rename), so it holds the earlier one, and metrics of later steps."""
    import shutil

    shutil.copytree(run, copy)
    shutil.rmtree(sorted((copy / "checkpoints").iterdir())[-1])
    return copy


def torchrun(*args, nproc=2):
    env = {**os.environ, **CPU_RUN}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(nproc), "-m", "mirasol.cli", *args], capture_output=True, text=True, env=env)


FSDP_ARGS = [*FAST, "train.max_steps=4", "train.save_every=2", "train.grad_accum=2", "model.mask_ratio=0"]


def test_fsdp_two_gloo_processes_match_one_and_resume_on_one(world, tmp_path):
    """FSDP2 (fully_shard per block, gloo, with activation checkpointing) on 2 processes gives the
    single-process losses; its sharded checkpoint resumes on 1 process with the same losses; the
    consolidated model.safetensors loads with from_pretrained."""
    from mirasol import Mirasol
    from mirasol import run_dir

    args = ["train", "--config", "tiny", "--train", str(world / "train.jsonl"), *FSDP_ARGS,
            "data.cache=" + str(tmp_path / "cache")]
    one = tmp_path / "one"
    r1 = run_cli(*args, "--out", str(one))
    assert r1.returncode == 0, r1.stderr[-2000:]
    two = tmp_path / "two"
    r2 = torchrun(*args, "train.strategy=fsdp", "train.activation_checkpointing=true", "--out", str(two))
    assert r2.returncode == 0, r2.stderr[-3000:]
    a, b = losses(one), losses(two)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:  # same global batch, same maths; only the order of float sums differs
        assert b[step] == pytest.approx(a[step], rel=1e-4), step
    ckpt = two / "checkpoints" / "step_00000002"
    assert sorted(p.name for p in (ckpt / "sharded").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert "optimizer" not in run_dir.load_train_state(ckpt)  # sharded with the model instead
    # consolidated weights: from_pretrained works, names and shapes are the model's, values are
    # the single-process run's up to float rounding amplified by AdamW (4 steps at lr 1e-3 move a
    # weight by at most ~4e-3)
    m1, m2 = Mirasol.from_pretrained(one).state_dict(), Mirasol.from_pretrained(two).state_dict()
    assert m1.keys() == m2.keys()
    assert max((m1[k] - m2[k]).abs().max().item() for k in m1) < 2e-3
    # the same checkpoint consolidated offline, in this process, without a process group
    offline = run_dir.consolidate(ckpt, tmp_path / "consolidated")
    saved = Mirasol.from_pretrained(ckpt).state_dict()
    for k, v in Mirasol.from_pretrained(offline).state_dict().items():
        assert torch.equal(v, saved[k]), k
    # killed after step 2's checkpoint; resumed on ONE process (the checkpoint was written by two)
    resumed = _without_last_checkpoint(two, tmp_path / "resumed")
    r3 = run_cli(*args, "train.strategy=fsdp", "--out", str(resumed), "--resume")
    assert r3.returncode == 0, r3.stderr[-3000:]
    c = losses(resumed)
    assert sorted(c) == [1, 2, 3, 4]
    for step in c:
        assert c[step] == pytest.approx(b[step], rel=1e-4), step
    # a sharded checkpoint cannot be resumed as a ddp run (and the error says so)
    r4 = run_cli(*args, "--out", str(resumed), "--resume")
    assert r4.returncode == 2 and "train.strategy=fsdp" in r4.stderr


@pytest.mark.slow
def test_fsdp_killed_run_resumes_on_two_processes_and_bf16_loss_falls(world, tmp_path):
    """kill -9 a 2-process FSDP run (bf16 mixed precision) after its first checkpoint; resuming on 2
    processes gives the uninterrupted run's losses, which fall."""
    args = ["train", "--config", "tiny", "--train", str(world / "train.jsonl"), *FSDP_ARGS,
            "train.max_steps=6", "train.strategy=fsdp", "train.precision=bf16", "train.lr=3e-3",
            "data.cache=" + str(tmp_path / "cache")]
    full = tmp_path / "full"
    r = torchrun(*args, "--out", str(full))
    assert r.returncode == 0, r.stderr[-3000:]
    killed = tmp_path / "killed"
    env = {**os.environ, **CPU_RUN}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "mirasol.cli", *args, "--out", str(killed)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.time() + 600
    while not (killed / "checkpoints" / "step_00000002").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
    proc.wait()
    assert (killed / "checkpoints" / "step_00000002").exists()
    assert not (killed / "checkpoints" / "step_00000006").exists(), "the run finished before it could be killed"
    r = torchrun(*args, "--out", str(killed), "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = losses(full), losses(killed)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-3), step
    assert a[6] < 0.9 * a[1]


def test_more_processes_than_gpus_fail_before_the_process_group_forms(monkeypatch):
    # A second torchrun process on a one-GPU machine would otherwise die with CUDA's "invalid device
    # ordinal" after joining the process group; the error names the two ways out.
    from mirasol.train.distributed import setup_distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ConfigError, match=r"LOCAL_RANK=1 .* 1 CUDA device.*--nproc_per_node 1.*CUDA_VISIBLE_DEVICES"):
        setup_distributed("fsdp")
    assert not torch.distributed.is_initialized()
