"""Smoke tests of `mirasol bench`: the benchmarks run at toy sizes and return what they promise.
No timing assertions (the machine may be busy)."""

import json

import pytest

from mirasol import MirasolConfig
from mirasol import bench


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
                         questions_per_clip=(1, 2, 4))
    assert set(r["results"]) == {"transformer/b2/k1", "transformer/b2/k2", "ttm/b2/k1", "ttm/b2/k2"}  # 4 skipped
    for v in r["results"].values():
        for key in ("median_s", "min_s", "samples_per_s", "batch", "combiner", "parameters"):
            assert key in v
        assert v["samples_per_s"] > 0
    json.dumps(r)


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


def test_store_smoke(tmp_path):
    if bench.real_media_dir() is None:
        pytest.skip("real sample videos not found")
    candidates = {"h264 crf18 444 gop=chunk": bench.STORE_CANDIDATES["h264 crf18 444 gop=chunk"]}
    r = bench.bench_store(presets=("tiny",), candidates=candidates, repeats=1, prepare_presets=("tiny",),
                          prepare_stores=("raw", "h264"), workers=(1,), copies=1, loader_presets=("tiny",),
                          loader_stores=("h264", "none"), loader_samples=2, step_preset=None, root=tmp_path,
                          quiet=True)
    rows = r["codecs"]
    assert len(rows) == 2 * len(bench.REAL_INPUTS)  # raw + the candidate, per input
    for name, row in rows.items():
        assert row["ratio"] >= 1 and row["decode_ms"] > 0
        if name.endswith("gop=chunk"):
            assert row["video_bytes"] < row["raw_bytes"] - row["audio_bytes"] and 25 < row["psnr_db"] < 99
    assert set(r["prepare"]) == {"tiny/raw/w1", "tiny/h264/w1"}
    assert r["prepare"]["tiny/h264/w1"]["bytes_per_clip"] < r["prepare"]["tiny/raw/w1"]["bytes_per_clip"]
    assert set(r["loader"]) == {"tiny/h264/w1", "tiny/none/w1"}
    assert all(v["samples_per_s"] > 0 for v in r["loader"].values())
    json.dumps(r)
