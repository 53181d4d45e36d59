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
