"""Smoke tests of `mirasol bench`: the benchmarks run at toy sizes and return what they promise.
No timing assertions (the machine may be busy)."""

import json

import pytest
import torch

from mirasol import MirasolConfig
from mirasol import perf as bench
from mirasol.cost import memory_plan


def test_generate_smoke():
    r = bench.bench_generate(batch=2, new_tokens=5, prompt_len=4, repeats=1, warmup=0, quiet=True)
    for key in ("cached", "uncached", "cached_ms_per_token", "uncached_ms_per_token", "speedup",
                "identical_tokens", "new_tokens", "batch"):
        assert key in r
    assert r["new_tokens"] == 5  # EOS is disabled: every row runs the full length
    assert r["identical_tokens"] is True
    assert r["cached"]["median_s"] > 0 and len(r["uncached"]["times_s"]) == 1
    json.dumps(r)


def test_step_smoke():
    r = bench.bench_step(batch_sizes=(2,), combiners=("transformer", "ttm"), repeats=1, warmup=0, quiet=True,
                         questions_per_clip=(1, 2, 4), device="cpu")
    assert set(r["results"]) == {"transformer/b2/k1", "transformer/b2/k2", "ttm/b2/k1", "ttm/b2/k2"}  # 4 skipped
    for v in r["results"].values():
        for key in ("median_s", "min_s", "samples_per_s", "batch", "combiner", "parameters"):
            assert key in v
        assert v["samples_per_s"] > 0
        assert v["flops_per_sample"] > 0 and v["model_tflops_per_s"] > 0
        assert v["mfu"] is None  # no GPU: no peak to divide by
    # k questions share one clip's media FLOPs: per-sample FLOPs fall with k
    assert r["results"]["transformer/b2/k2"]["flops_per_sample"] < r["results"]["transformer/b2/k1"]["flops_per_sample"]
    assert r["precision"] == "fp32" and r["device"] == "cpu"
    json.dumps(r)


def test_step_keeps_going_past_a_batch_that_does_not_fit(monkeypatch):
    """A batch that runs out of memory becomes a row saying so; the other batches are still timed."""
    from mirasol.perf import model_speed

    real = model_speed._train_step

    def step(model, optimizer, batch, bf16=False):
        if batch["input_ids"].shape[0] == 4:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, optimizer, batch, bf16)

    monkeypatch.setattr(model_speed, "_train_step", step)
    r = bench.bench_step(batch_sizes=(2, 4), combiners=("transformer",), repeats=1, warmup=1, quiet=True,
                         questions_per_clip=(1,), device="cpu")
    assert r["results"]["transformer/b4/k1"]["error"] == "out of memory"
    assert "median_s" not in r["results"]["transformer/b4/k1"]
    assert r["results"]["transformer/b2/k1"]["samples_per_s"] > 0


def test_memory_plan_table_and_cpu_check(monkeypatch):
    """The plan's table for tiny, and the plan against the measured peak of a CPU step (fp32): the
    measured peak was within 6 % of the plan at batch 8 and 32 (benchmarks/README.md), also with the
    model sharded by FSDP over a group of one. A GPU is hidden, so that the check is the CPU's there too."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = bench.bench_memory(presets=("tiny",), gpus=(1, 2), batch_per_gpu=4, check=(("tiny", 8, "ddp", False),
                           ("tiny", 8, "fsdp", True)), quiet=True)
    assert len(r["plans"]) == 2 * 2 * 2  # strategies x GPU counts x activation checkpointing
    fsdp2 = [p for p in r["plans"] if p["strategy"] == "fsdp" and p["gpus"] == 2 and not p["activation_checkpointing"]]
    ddp2 = [p for p in r["plans"] if p["strategy"] == "ddp" and p["gpus"] == 2 and not p["activation_checkpointing"]]
    assert fsdp2[0]["optimizer"] == ddp2[0]["optimizer"] / 2
    assert r["check_device"] == "cpu" and [c["strategy"] for c in r["check"]] == ["ddp", "fsdp"]
    for c in r["check"]:
        assert 0.7 < c["measured_over_estimate"] < 1.4, c
    json.dumps(r)


def test_memory_check_on_a_gpu_takes_the_largest_planned_batch():
    """What `mirasol bench memory` measures on a GPU (the CUDA step itself needs one): base and
    mirasol3b under fsdp with activation checkpointing, at the largest batch the plan fits in 90 %
    of the device; a preset that does not fit at batch 1 is left out."""
    from mirasol.cost import GIB, max_batch

    checks = bench.default_checks(80 * GIB)
    assert [c[0] for c in checks] == ["base", "mirasol3b"]
    for preset, b, strategy, ac in checks:
        assert strategy == "fsdp" and ac
        cfg = MirasolConfig.preset(preset)
        assert b == max_batch(cfg, 72 * GIB, strategy="fsdp", gpus=1, checkpointing=True, bf16=True, text_len=24) >= 1
        assert memory_plan(cfg, "fsdp", 1, b + 1, checkpointing=True, bf16=True, text_len=24).total > 72 * GIB
    assert [c[0] for c in bench.default_checks(16 * GIB)] == ["base"]  # 3 B parameters' states alone are 45 GiB
    assert [c[0] for c in bench.default_checks(None)][:2] == ["tiny", "tiny"]  # no GPU: small CPU steps


def test_chunks_smoke():
    r = bench.bench_chunks(chunks=(1, 2), batch=1, repeats=1, warmup=0, overrides={"image_size": 32}, quiet=True)
    assert set(r["results"]) == {"1", "2"}
    two = r["results"]["2"]
    cfg = MirasolConfig.preset("tiny", num_chunks=2, **{**bench.CHUNK_OVERRIDES, "image_size": 32})
    assert two["baseline_tokens"] == 2 * (cfg.video_tokens_per_chunk + cfg.audio_tokens_per_chunk)
    assert {"chunked_ms_per_chunk", "baseline_ms_per_chunk", "baseline_over_chunked"} <= set(two)
    assert {"chunked_time_growth", "baseline_time_growth"} <= set(r["summary"])


def test_attention_elements_grow_quadratically_only_for_the_baseline():
    small = bench.attention_elements(MirasolConfig.preset("tiny", num_chunks=2, **bench.CHUNK_OVERRIDES))
    large = bench.attention_elements(MirasolConfig.preset("tiny", num_chunks=8, **bench.CHUNK_OVERRIDES))
    assert large["baseline"] == 16 * small["baseline"]
    assert large["chunked"] < 8 * small["chunked"] * 1.1  # per-chunk terms dominate: ~linear


def test_unknown_benchmark_is_rejected():
    with pytest.raises(ValueError, match="unknown benchmark"):
        bench.run("nope")


def test_uniform_smoke(tmp_path):
    r = bench.bench_uniform(seconds=24, size=(128, 96), fps=10, gop_s=1.0, presets=("tiny",), root=tmp_path,
                            quiet=True)
    whole, tiny = r["runs"]["whole"], r["runs"]["tiny"]
    assert r["frames_in_file"] == 240 and whole["frames_decoded"] >= 239  # every frame
    # 8 samples over 24 s (3 s apart, keyframes every second): the decoder skips most frames
    assert tiny["frames"] == 8 and tiny["covers_s"] == pytest.approx(24, abs=0.1)
    assert tiny["frames_decoded"] < 0.6 * whole["frames_decoded"]
    json.dumps(r)


def test_store_smoke(tmp_path, generated_media):
    inputs = [generated_media.path(role) for role in ("fits", "short", "no_duration", "long")]
    candidates = {"h264 crf18 444 gop=chunk": bench.STORE_CANDIDATES["h264 crf18 444 gop=chunk"]}
    r = bench.bench_store(presets=("tiny",), candidates=candidates, repeats=1, prepare_presets=("tiny",),
                          prepare_stores=("raw", "h264"), workers=(1,), copies=1, loader_presets=("tiny",),
                          loader_stores=("h264", "none"), loader_samples=2, step_preset=None, root=tmp_path,
                          inputs=inputs, quiet=True)
    rows = r["codecs"]
    assert r["inputs"] == [p.name for p in inputs] and len(rows) == 2 * 4  # raw + the candidate, per input
    assert all(row["ratio"] >= 1 and row["decode_ms"] > 0 for row in rows.values())
    encoded = [row for name, row in rows.items() if name.endswith("gop=chunk")]
    assert len(encoded) == 4
    assert all(row["video_bytes"] < row["raw_bytes"] - row["audio_bytes"] and 25 < row["psnr_db"] < 99
               for row in encoded)
    assert set(r["prepare"]) == {"tiny/raw/w1", "tiny/h264/w1"}
    assert r["prepare"]["tiny/h264/w1"]["bytes_per_clip"] < r["prepare"]["tiny/raw/w1"]["bytes_per_clip"]
    assert set(r["loader"]) == {"tiny/h264/w1", "tiny/none/w1"}
    assert all(v["samples_per_s"] > 0 for v in r["loader"].values())
    json.dumps(r)


def test_long_smoke():
    """`bench long` at toy sizes: every case runs in its own process and reports time and peak RSS;
    the windowed stream's cache stops growing at (window - 1) chunks."""
    r = bench.bench_long(frames=(6,), preset="tiny", window=2, repeats=1, quiet=True)
    assert set(r["results"]) == {f"{v}/6" for v in bench.LONG_VARIANTS}
    for v in r["results"].values():
        assert v["median_s"] > 0 and v["ms_per_frame"] > 0, v
        assert v["peak_rss_mb"] > 0 and v["peak_above_start_mb"] is not None
    m = MirasolConfig.preset("tiny").combiner_tokens
    assert r["results"]["stream/6"]["cache_tokens_per_layer"] == 3 * m  # 6 frames = 3 chunks, all cached
    assert r["results"]["stream_window/6"]["cache_tokens_per_layer"] == m  # the last W - 1 = 1 chunk
    assert "unchunked_over_batch_6" in r["summary"] and r["results"]["batch/6"]["cpu_ms_per_frame"] > 0
    json.dumps(r)


def test_bench_serve_later_questions_cost_only_the_decoder(tmp_path, monkeypatch):
    pytest.importorskip("fastapi")  # not needed by the benchmark itself, but the serve extra marks the set-up
    monkeypatch.setenv("MIRASOL_BENCH_DIR", str(tmp_path))
    r = bench.bench_serve(preset="tiny", seconds=6, questions=3, quiet=True, clients=(1, 4), questions_per_client=2,
                          rounds=1)
    assert r["chunks"] == 6 and r["first_question_s"] > r["encode_s"] > 0
    assert r["probe_s"] > 0 and r["encode_in_process_s"] > 0 and "worker process" in r["decoder"]
    assert r["upload_cpu_s"] > 0 and r["upload_cpu_in_process_s"] > 0
    assert r["later_question_s"] > 0 and r["speedup"] == pytest.approx(r["first_question_s"] / r["later_question_s"])
    many = r["concurrent"]["results"]
    assert many["one at a time/4"]["largest_batch"] == 1 and many["batched/4"]["questions"] == 8
    assert many["batched/4"]["p95_s"] >= many["batched/4"]["p50_s"] > 0 and min(r["concurrent"]["bench_step_tiny_b8_ms_before_after"]) > 0


def test_store_inputs_are_the_real_samples_or_generated(tmp_path, monkeypatch):
    from mirasol.perf import media as perf_media
    from mirasol.media import load_clip

    monkeypatch.delenv("MIRASOL_MEDIA_DIR", raising=False)
    monkeypatch.delenv("MIRASOL_SAMPLES", raising=False)
    monkeypatch.setattr(perf_media, "GENERATED_INPUTS", {"1s_64x48.mp4": (1.0, (64, 48))})
    [made] = perf_media.store_inputs(tmp_path / "bench")
    assert made == tmp_path / "bench" / "generated" / "1s_64x48.mp4"
    assert load_clip(made, MirasolConfig.preset("tiny")).valid_seconds == pytest.approx(1.0, abs=0.05)
    samples = tmp_path / "samples"
    (samples / "media").mkdir(parents=True)
    for name in perf_media.REAL_INPUTS:
        (samples / "media" / name).write_bytes(b"")
    monkeypatch.setenv("MIRASOL_SAMPLES", str(samples))  # the tests' samples folder (media/, annotations/)
    assert perf_media.store_inputs(tmp_path / "bench") == [samples / "media" / n for n in perf_media.REAL_INPUTS]
