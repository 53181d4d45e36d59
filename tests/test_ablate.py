"""The ablation grid (`mirasol ablate`), `evaluate --whole` and the test-time controls.

The grid runs end to end at toy size (8 s worlds of a few clips, 2 steps, one seed): every row
trains and is scored, the summary, table and plot are written, and a second call keeps finished
runs and resumes an unfinished one."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

pytest.importorskip("av")

from mirasol import MirasolConfig  # noqa: E402
from mirasol.ablate import VARIANTS, GridSettings, format_table, grid_settings, run_grid, summarize  # noqa: E402
from mirasol.errors import UsageError  # noqa: E402
from mirasol.eval.claims import render_blocks, write_result  # noqa: E402
from mirasol.cli import main  # noqa: E402
from mirasol.eval.controls import perturb_chunks, perturb_media  # noqa: E402
from mirasol.media.features import SILENCE, whisper_log_mel  # noqa: E402


def _toy(out, **kw) -> GridSettings:
    return GridSettings(out, seeds=(0,), steps=2, clips=6, seconds=8, short_seconds=8, clips_per_step=1,
                        jobs=1, threads=2, progress=False, log=lambda text: None, **kw)


@pytest.mark.slow
def test_quick_grid_runs_every_row_and_resumes(tmp_path):
    assert "counting" not in GridSettings(tmp_path).variants  # a row with its own budget: named to run
    settings = _toy(tmp_path / "grid", results=tmp_path / "results", variants=tuple(VARIANTS))
    summary = run_grid(settings)
    shared = {p.name for p in settings.results.iterdir()}
    assert shared == {f"{name}-seed0-steps2.json" for name in VARIANTS}
    assert {c["claim"] for c in summary["claims"]} >= {"chunks", "combiner", "curriculum"}
    rows = summary["rows"]
    for name in VARIANTS:
        assert name in rows, name
        row = rows[name]
        assert set(row["families"]) == {"start_color", "end_color", "color_changes", "sync_color", "first_pitch",
                                        "last_pitch", "tone_count", "order"}
        assert row["train_flops_per_sample"] > 0 and row["parameters"] > 0 and row["train_seconds"][0] > 0
    for control in ("zero_audio", "zero_video", "zero_media", "shuffle"):
        assert f"reference [{control}]" in rows
    assert "short_train [short_test]" in rows
    # the whole-video row costs more per sample than 32 chunks would not: check the FLOPs differ by row
    assert rows["whole_video"]["train_flops_per_sample"] != rows["reference"]["train_flops_per_sample"]
    assert rows["ttm"]["train_flops_per_sample"] < rows["reference"]["train_flops_per_sample"]
    out = settings.out
    for f in ("results.json", "table.md", "accuracy_vs_flops.png"):
        assert (out / f).stat().st_size > 0
    short = json.loads((out / "runs" / "short_train" / "seed0" / "test" / "report.json").read_text())
    assert short["whole"] is True  # streamed whole
    # resumable: finished runs are kept; a run without its result is resumed from its checkpoint
    kept = (out / "runs" / "ttm" / "seed0" / "result.json").stat().st_mtime_ns
    (out / "runs" / "reference" / "seed0" / "result.json").unlink()
    (settings.results / "reference-seed0-steps2.json").unlink()  # else taken as finished elsewhere
    run_grid(replace(settings, variants=("reference", "ttm")))
    assert (out / "runs" / "ttm" / "seed0" / "result.json").stat().st_mtime_ns == kept
    again = json.loads((out / "runs" / "reference" / "seed0" / "result.json").read_text())
    assert again["resumed"] is True


def test_sweep_rows_change_one_thing_each(tmp_path):
    """The chunk-count rows fix either the total latents (256) or the tokens per chunk (8), over the
    same 64 frames; the latent-loss and masking sweeps change only their one setting."""
    from mirasol.ablate import run_config_for

    settings = GridSettings(tmp_path)
    cfgs = {name: run_config_for(VARIANTS[name], settings, 0).model for name in VARIANTS}
    for name, chunks, tokens in (("reference", 32, 8), ("chunks_16", 16, 16), ("chunks_8", 8, 32),
                                 ("chunks_16_m8", 16, 8), ("chunks_8_m8", 8, 8)):
        cfg = cfgs[name]
        assert (cfg.num_chunks, cfg.combiner_tokens) == (chunks, tokens), name
        assert cfg.num_chunks * cfg.frames_per_chunk == 64, name
    assert {n: cfgs[n].latent_loss_weight for n in ("no_latent", "reference", "latent_1.0")} == {
        "no_latent": 0.0, "reference": 0.1, "latent_1.0": 1.0}
    assert [cfgs[n].mask_ratio for n in ("reference", "mask_0.25", "mask_0.5", "mask_0.75")] == [0, 0.25, 0.5, 0.75]
    ref = cfgs["reference"].to_dict()
    for name, key in (("latent_1.0", "latent_loss_weight"), ("mask_0.25", "mask_ratio"), ("mask_0.5", "mask_ratio")):
        assert {k for k, v in cfgs[name].to_dict().items() if ref[k] != v} == {key}, name
    assert not any(VARIANTS[n].default for n in ("latent_1.0", "mask_0.25", "mask_0.5", "chunks_8_m8", "chunks_16_m8",
                                                 "curriculum_no_latent", "curriculum_ttm"))
    # the curriculum's rows differ from it in their one setting, in both phases
    from mirasol.ablate import long_phase

    cur = cfgs["curriculum"].to_dict()
    for name, key in (("curriculum_no_latent", "latent_loss_weight"), ("curriculum_ttm", "combiner")):
        assert VARIANTS[name].then_long == VARIANTS["curriculum"].then_long and VARIANTS[name].world == "short"
        assert {k for k, v in cfgs[name].to_dict().items() if cur[k] != v} == {key}, name
        assert len(long_phase(VARIANTS[name]).overrides) == len(long_phase(VARIANTS["curriculum"]).overrides) + 1


def test_summary_means_and_deviations():
    def result(seed, acc):
        by_type = {"a": {"n": 4, "accuracy": acc, "answer_prior": 0.25}}
        return {"variant": "v", "seed": seed, "train_flops_per_sample": 1e9, "train_flops": 1e12, "parameters": 10,
                "train_seconds": 10.0 + seed, "eval_seconds": 1.0,
                "reports": {"test": {"accuracy": acc, "by_type": by_type, "n": 4}}}

    summary = summarize([result(0, 0.5), result(1, 0.7)])
    mean, std = summary["rows"]["v"]["families"]["a"]
    assert math.isclose(mean, 0.6) and math.isclose(std, math.sqrt(0.02))
    lo, hi = summary["rows"]["v"]["interval"]  # 0.6 +- t(0.975, 1) * 0.1414 / sqrt(2) = 0.6 +- 12.706 * 0.1
    assert round(lo, 3) == -0.671 and round(hi, 3) == 1.871
    table = format_table(summary)
    assert "0.60 ± 0.14" in table and "[-0.671, 1.871]" in table and "could not be told apart" in table


def _result(variant, seed, accuracy, budget=1000, settings=None, **extra):
    by_type = {"a": {"n": 4, "accuracy": accuracy, "answer_prior": 0.25}}
    return {"variant": variant, "seed": seed, "steps": budget, "budget": budget,
            "settings": settings or {"clips": 600, "seconds": 32, "clips_per_step": 4, "extra": []},
            "train_flops_per_sample": 1e9, "train_flops": 1e12, "parameters": 10, "train_seconds": 10.0,
            "eval_seconds": 1.0, "reports": {"test": {"accuracy": accuracy, "by_type": by_type, "n": 4}}, **extra}


def _summary_file(variant, mean, sd, seeds=(0, 1, 2), budget=1000):
    return {"kind": "summary", "source": "transcribed", "variant": variant, "seeds": list(seeds), "budget": budget,
            "steps": budget, "settings": {"clips": 600, "seconds": 32, "clips_per_step": 4, "extra": []},
            "train_flops_per_sample": 2e9, "train_flops": 2e12, "parameters": 11,
            "train_seconds": {"mean": 20.0, "sd": 1.0}, "answer_prior": {"a": 0.25},
            "reports": {"test": {"accuracy": {"mean": mean, "sd": sd}, "by_type": {"a": {"mean": mean, "sd": sd}}}}}


def test_claims_are_tested_on_runs_and_summaries():
    runs = [_result("reference", s, a) for s, a in enumerate((0.406, 0.381, 0.379))]
    summary = summarize(runs + [_summary_file("whole_video", 0.371, 0.002)], order=list(VARIANTS))
    (claim,) = summary["claims"]
    # Welch on 0.389 +- 0.015 (3 seeds) against 0.371 +- 0.002 (3 seeds)
    assert claim["claim"] == "chunks" and round(claim["p"], 2) == 0.18 and claim["verdict"] == "could not be told apart"
    assert round(claim["difference"], 3) == 0.018 and claim["seeds"] == [3, 3]
    # a run of a seed that a summary lists replaces the summary; other seeds pool with it
    summary = summarize([_summary_file("ttm", 0.5, 0.0, seeds=(0, 1)), _result("ttm", 2, 0.8)])
    assert summary["rows"]["ttm"]["n"] == 3 and math.isclose(summary["rows"]["ttm"]["accuracy"][0], 0.6)
    summary = summarize([_summary_file("ttm", 0.5, 0.0, seeds=(0, 1)), _result("ttm", 1, 0.8)])
    assert summary["rows"]["ttm"]["n"] == 1 and summary["rows"]["ttm"]["seeds"] == [1]


def test_table_only_rewrites_the_marked_blocks(tmp_path, capsys):
    results = tmp_path / "results"
    for s, a in enumerate((0.40, 0.42, 0.41)):
        write_result(results, _result("reference", s, a))
        write_result(results, _result("mask_0.75", s, a - 0.08))
    (results / "whole_video-steps1000.json").write_text(json.dumps(_summary_file("whole_video", 0.371, 0.002)))
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- ablate:claims -->\nSTALE\n<!-- /ablate:claims -->\nmiddle\n"
                   "<!-- ablate:short steps=1000 families=a -->\n<!-- /ablate:short -->\nend\n")
    assert main(["ablate", "--table-only", "--results", str(results), "--docs", str(doc)]) == 0
    out = capsys.readouterr().out
    assert "95 % interval" in out and "| p |" in out and "Welch" in out and "did not hold" in out
    text = doc.read_text()
    assert text.startswith("intro\n<!-- ablate:claims -->\n| claim |") and "STALE" not in text
    assert "\nmiddle\n<!-- ablate:short steps=1000 families=a -->\n| row |" in text and text.endswith("end\n")
    assert "**held**" in text and "**did not hold**" in text  # reference > whole_video; masking lowers accuracy
    assert main(["ablate", "--table-only", "--results", str(results), "--docs", str(doc)]) == 0
    assert doc.read_text() == text  # the same files give the same tables
    doc.write_text("<!-- ablate:rows steps=3000 -->\n<!-- /ablate:rows -->\n")
    assert main(["ablate", "--table-only", "--results", str(results), "--docs", str(doc)]) == 2
    assert "3000-step results" in capsys.readouterr().err
    with pytest.raises(UsageError, match="close"):
        render_blocks("<!-- ablate:claims -->\nno end\n", {})


def test_grid_takes_runs_finished_elsewhere_from_the_results_folder(tmp_path):
    settings = _toy(tmp_path / "grid", variants=("reference", "ttm"), results=tmp_path / "results")
    settings = replace(settings, seeds=(0, 1))
    for variant in settings.variants:
        for seed in settings.seeds:
            write_result(settings.results, _result(variant, seed, 0.3 + 0.1 * seed + (variant == "ttm") * 0.05,
                                                   budget=settings.steps, settings=grid_settings(settings)))
    summary = run_grid(settings)
    assert not (settings.out / "data").exists()  # nothing trained: no world was written
    assert summary["rows"]["reference"]["seeds"] == [0, 1] and summary["claims"][0]["claim"] == "combiner"
    assert "verdict" in (settings.out / "table.md").read_text()
    other = replace(settings, out=tmp_path / "grid2", clips=settings.clips + 1)
    with pytest.raises(UsageError, match="other grid settings"):
        run_grid(other)


def test_cli_rejects_unknown_variant(tmp_path, capsys):
    assert main(["ablate", "--out", str(tmp_path / "g"), "--variants", "reference,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_controls_keep_each_chunk_whole():
    cfg = MirasolConfig.preset("tiny", num_chunks=6)
    t = torch.arange(6, dtype=torch.float32)
    video = t.repeat_interleave(2)[None, :, None, None, None].expand(2, 12, 3, 32, 32) / 10
    audio = t.repeat_interleave(cfg.audio_frames_per_chunk)[None, None].expand(2, cfg.n_mels, -1).clone()
    mask = torch.ones(2, 6, dtype=torch.bool)
    v, a, m = perturb_media(video, audio, mask, cfg, "shuffle", torch.Generator().manual_seed(0))
    v_order = (v[:, ::2, 0, 0, 0] * 10).round()
    a_order = a[:, 0, ::cfg.audio_frames_per_chunk]
    assert torch.equal(v_order, a_order)  # each chunk keeps its own sound
    assert not torch.equal(v_order[0], t)  # ... in another order
    assert sorted(v_order[0].tolist()) == t.tolist()
    v, a, _ = perturb_media(video, audio, mask, cfg, "zero_audio")
    assert torch.equal(v, video) and torch.all(a == SILENCE)
    v, a, _ = perturb_media(video, audio, mask, cfg, "zero_video")
    assert torch.all(v == 0) and torch.equal(a, audio)
    chunks = [(video[0, 2 * i: 2 * i + 2], audio[0, :, 100 * i: 100 * (i + 1)]) for i in range(6)]
    shuffled = perturb_chunks(chunks, "shuffle", cfg, torch.Generator().manual_seed(1))
    assert [float(c[1][0, 0]) for c in shuffled] == [float(c[0][0, 0, 0, 0] * 10) for c in shuffled]
    assert all(torch.all(a == SILENCE) for _, a in perturb_chunks(chunks, "zero_audio", cfg))
    # silence is the value an all-zero input takes in the model's own audio features
    whisper = MirasolConfig.preset("tiny", num_chunks=6, audio_features="whisper")
    quiet = whisper_log_mel(torch.zeros(16000), whisper)
    _, a, _ = perturb_media(video, audio, mask, whisper, "zero_audio")
    assert torch.all(a == quiet.flatten()[0]) and torch.all(quiet == quiet.flatten()[0])
    assert all(torch.all(a == quiet.flatten()[0]) for _, a in perturb_chunks(chunks, "zero_media", whisper))
    with pytest.raises(ValueError):
        perturb_media(video, audio, mask, cfg, "bogus")


def test_evaluate_whole_streams_every_chunk(tmp_path):
    """A run trained on 4 chunks, scored with --whole on 8 s clips, answers from the latents of all 8
    chunks: the same answers as encode_media over the whole clip (and --window as its windowed form)."""
    from mirasol.corpora.long_world import synthesize_long
    from mirasol.data.dataset import _pad
    from mirasol.data.manifest import prompt_text, read_manifest
    from mirasol.eval.evaluate import evaluate
    from mirasol.eval.predict import predict_from_memory
    from mirasol.media.clip import load_clip
    from mirasol.run_config import load_run_config
    from mirasol.run_dir import load_run
    from mirasol.train.loop import train

    data = tmp_path / "w"
    synthesize_long(data, num=4, seed=0, seconds=8, progress=False)
    cfg = load_run_config("tiny", ["model.num_chunks=4", "train.max_steps=3", "train.batch_size=8",
                                   "train.questions_per_clip=8", "train.plots=false", "train.eval_every=0"])
    train(cfg, str(data / "train.jsonl"), None, tmp_path / "run", progress=False)
    model, tokenizer, stats, _ = load_run(tmp_path / "run")
    samples = read_manifest(data / "test.jsonl")
    clip = load_clip(samples[0].video, model.cfg.replace(num_chunks=8))
    for window in (None, 2):
        report = evaluate(tmp_path / "run", data / "test.jsonl", tmp_path / f"r{window}" / "report.json",
                          progress=False, whole=True, window=window)
        assert report["n"] == len(samples) == 8 and report["whole"] is True and report["window"] == window
        rows = [json.loads(line) for line in (tmp_path / f"r{window}" / "predictions.jsonl").read_text().splitlines()]
        with torch.no_grad():
            latents = model.encode_media(clip.video[None], clip.audio[None], max_context_chunks=window)
        assert latents.shape[1] == 8
        prompts = _pad([tokenizer.encode_prompt(prompt_text(s), model.cfg.max_text_len) for s in samples],
                       tokenizer.pad_id, left=True)
        memory = latents.expand(len(samples), -1, -1, -1)
        direct = predict_from_memory(model, tokenizer, memory, prompts, samples, labels=stats.get("labels"))
        assert [r["prediction"] for r in rows] == direct


def test_the_docs_tables_are_the_result_files_tables():
    """The marked tables of benchmarks/ablations.md and benchmarks/README.md are what `mirasol ablate
    --table-only` makes from benchmarks/results: regenerate them after adding result files."""
    from pathlib import Path

    from mirasol.ablate import table_only

    root = Path(__file__).resolve().parents[1]
    summaries = table_only(root / "benchmarks" / "results", log=lambda text: None)
    for doc in ("ablations.md", "README.md"):
        text = (root / "benchmarks" / doc).read_text()
        rendered, count = render_blocks(text, summaries, doc)
        assert count >= 2 and rendered == text, f"run: mirasol ablate --table-only --results benchmarks/results " \
                                                f"--docs benchmarks/ablations.md benchmarks/README.md ({doc})"
