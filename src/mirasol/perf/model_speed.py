"""Model speed: the training step (with FLOPs / MFU), cost vs number of chunks against one unchunked
transformer, and generation with vs without the KV cache."""

from __future__ import annotations


import torch
from torch import nn

from mirasol.choices import COMBINERS
from mirasol.config import MirasolConfig
from mirasol.model.encoders import AudioEncoder, VideoEncoder
from mirasol.model.layers import Encoder
from mirasol.model.chunks import split_chunks
from mirasol.model.mirasol import Mirasol
from mirasol.perf.common import _train_step, device_peak_tflops, measure, print_table, random_batch


# ------------------------------------------------------------------------------------------------
# 1. step


def bench_step(batch_sizes=(8, 32), combiners=COMBINERS, preset: str = "tiny",
               repeats: int = 5, warmup: int = 2, overrides: dict | None = None, quiet: bool = False,
               questions_per_clip=(1, 4), device: str = "auto", precision: str = "auto",
               text_len: int = 24, compile: bool = False) -> dict:
    """Forward + backward + AdamW step time per (combiner, batch size, questions per clip);
    samples (text rows) per second; model FLOPs per sample counted analytically
    (`mirasol.cost.model_flops`: 3x the forward's matmul FLOPs) and the FLOP/s they make; on a GPU
    whose bf16 peak is known, MFU = achieved model FLOP/s / peak. Questions per clip k: the batch's
    rows ask about batch / k clips, each encoded once (`train.questions_per_clip`). `compile`: the
    forward runs through torch.compile (as `train.compile`); compiling falls in the warm-up steps."""
    from mirasol.cost import model_flops
    from mirasol.train.optim import adamw_kernel

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    bf16 = precision == "bf16" or (precision == "auto" and dev.type == "cuda")
    peak = device_peak_tflops(dev)
    torch.manual_seed(0)
    variants, meta = {}, {}
    for combiner in combiners:
        cfg = MirasolConfig.preset(preset, combiner=combiner, **(overrides or {}))
        model = Mirasol(cfg).to(dev).train()
        forward = torch.compile(model) if compile else model
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, **adamw_kernel(dev))  # as in training
        for bs in batch_sizes:
            for k in questions_per_clip:
                if bs % k:
                    continue
                name = f"{combiner}/b{bs}/k{k}"
                batch = {key: v.to(dev) for key, v in random_batch(cfg, bs, text_len, questions_per_clip=k).items()}
                variants[name] = (lambda m=forward, o=optimizer, b=batch: _train_step(m, o, b, bf16))
                meta[name] = {"combiner": combiner, "batch": bs, "questions_per_clip": k,
                              "parameters": model.num_parameters()["total"],
                              "flops_per_sample": model_flops(cfg, text_len, k)["train"]}
    for name in list(variants):  # a batch that does not fit is a row of the table, not the end of the run
        try:
            variants[name]()
        except torch.OutOfMemoryError:
            del variants[name]
            meta[name]["error"] = "out of memory"
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    times = measure(variants, repeats, max(0, warmup - 1))  # the trial above was the first warm-up
    rows = []
    for name, r in meta.items():
        if name not in times:
            rows.append([r["combiner"], r["batch"], r["questions_per_clip"], r["error"], "-", "-",
                         r["flops_per_sample"] / 1e9, "-", "-"])
            continue
        t = times[name]
        r.update(t)
        r["samples_per_s"] = r["batch"] / t["median_s"]
        r["model_tflops_per_s"] = r["samples_per_s"] * r["flops_per_sample"] / 1e12
        r["mfu"] = r["model_tflops_per_s"] / peak if peak else None
        rows.append([r["combiner"], r["batch"], r["questions_per_clip"], 1000 * t["median_s"], 1000 * t["min_s"],
                     r["samples_per_s"], r["flops_per_sample"] / 1e9, r["model_tflops_per_s"],
                     f"{100 * r['mfu']:.1f} %" if peak else "-"])
    result = {"preset": preset, "overrides": overrides or {}, "repeats": repeats, "warmup": warmup,
              "text_len": text_len, "compile": compile,
              "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
              "precision": "bf16" if bf16 else "fp32", "peak_bf16_tflops": peak,
              "flops_note": "model FLOPs per sample = 3 x forward matmul FLOPs (mirasol.cost.model_flops); "
                            "recomputation is not counted", "results": meta}
    if not quiet:
        print_table(f"step: {preset} preset, forward + backward + AdamW on {result['device']}, {result['precision']}"
                    f"{', torch.compile' if compile else ''} (median of {repeats})",
                    ["combiner", "batch", "questions/clip", "median ms", "min ms", "samples/s", "GFLOP/sample",
                     "TFLOP/s", "MFU"], rows)
        if not peak:
            print("  MFU needs a GPU with a known bf16 peak (or MIRASOL_PEAK_TFLOPS); FLOP/s shown as measured")
    return result


# ------------------------------------------------------------------------------------------------
# 2. chunks


class UnchunkedBaseline(nn.Module):
    """The design Mirasol avoids: one transformer over every video and audio token of the whole
    clip at once (T * (video_tokens_per_chunk + audio_tokens_per_chunk) tokens), with the same
    patch embeddings, width av_dim and the depth a token passes through in the chunked model
    (video_layers + combiner_layers + av_layers). `bench_chunks` sets video_dim = audio_dim = av_dim,
    so that both models have one width."""

    def __init__(self, cfg: MirasolConfig):
        super().__init__()
        d = cfg.av_dim
        self.cfg = cfg
        self.depth = cfg.video_layers + cfg.combiner_layers + cfg.av_layers
        self.t, self.p = cfg.tubelet_size, cfg.patch_size  # what the encoders' patchify methods read
        self.pm, self.pf = cfg.audio_patch_mels, cfg.audio_patch_frames
        self.video_embed = nn.Linear(cfg.tubelet_size * 3 * cfg.patch_size ** 2, d)
        self.audio_embed = nn.Linear(cfg.audio_patch_mels * cfg.audio_patch_frames, d)
        self.tokens = cfg.num_chunks * (cfg.video_tokens_per_chunk + cfg.audio_tokens_per_chunk)
        self.pos = nn.Parameter(torch.randn(self.tokens, d) * 0.02)
        self.modality = nn.Parameter(torch.randn(2, d) * 0.02)
        self.encoder = Encoder(d, cfg.av_heads, self.depth, cfg.mlp_ratio, cfg.dropout)

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        video_chunks, audio_chunks = split_chunks(video, audio, self.cfg)
        b, t = video_chunks.shape[:2]
        # the same tubelets and log-mel patches as the chunked encoders (their patchify methods)
        v = self.video_embed(VideoEncoder.patchify(self, (video_chunks.flatten(0, 1) - 0.5) * 4.0))
        a = self.audio_embed(AudioEncoder.patchify(self, audio_chunks.flatten(0, 1)))
        v, a = v + self.modality[0], a + self.modality[1]
        x = torch.cat([v.reshape(b, -1, v.shape[-1]), a.reshape(b, -1, a.shape[-1])], dim=1) + self.pos
        return self.encoder(x)  # full (non-causal) attention over all tokens of the clip


def attention_elements(cfg: MirasolConfig, batch: int = 1) -> dict[str, int]:
    """Elements of the attention score matrices (B x heads x Lq x Lk, summed over layers) of one
    encode_media call (transformer combiner) and of the unchunked baseline: counted, not measured."""
    t, nv, na, m = cfg.num_chunks, cfg.video_tokens_per_chunk, cfg.audio_tokens_per_chunk, cfg.combiner_tokens
    chunked = batch * t * (cfg.video_layers * cfg.video_heads * nv ** 2 + cfg.audio_layers * cfg.audio_heads * na ** 2
                           + cfg.combiner_layers * cfg.av_heads * (nv + na + m) ** 2)
    chunked += batch * cfg.av_layers * cfg.av_heads * (t * m) ** 2
    depth = cfg.video_layers + cfg.combiner_layers + cfg.av_layers
    baseline = batch * depth * cfg.av_heads * (t * (nv + na)) ** 2
    return {"chunked": chunked, "baseline": baseline}


# tiny widths (video_dim = audio_dim = av_dim = 64), 64 px frames, 4 frames per 1 s chunk:
# 128 video + 20 audio tokens per chunk
CHUNK_OVERRIDES = dict(image_size=64, frames_per_chunk=4, fps=4.0, video_dim=64, audio_dim=64, av_dim=64)


def bench_chunks(chunks=(2, 4, 8, 16), batch: int = 2, repeats: int = 5, warmup: int = 1,
                 overrides: dict | None = None, quiet: bool = False) -> dict:
    """encode_media time vs number of chunks T: chunked Mirasol vs UnchunkedBaseline (inference)."""
    overrides = {**CHUNK_OVERRIDES, **(overrides or {})}
    results = {}
    rows = []
    for t in chunks:
        torch.manual_seed(0)
        cfg = MirasolConfig.preset("tiny", num_chunks=t, **overrides)
        model, baseline = Mirasol(cfg).eval(), UnchunkedBaseline(cfg).eval()
        g = torch.Generator().manual_seed(0)
        video = torch.rand(batch, cfg.num_frames, 3, cfg.image_size, cfg.image_size, generator=g)
        audio = torch.randn(batch, cfg.n_mels, cfg.audio_frames, generator=g)
        with torch.no_grad():
            times = measure({"chunked": lambda: model.encode_media(video, audio),
                             "baseline": lambda: baseline(video, audio)}, repeats, warmup)
        elements = attention_elements(cfg, batch)
        r = {
            "num_chunks": t,
            "clip_seconds": cfg.clip_seconds,
            "chunked_tokens_per_chunk": cfg.video_tokens_per_chunk + cfg.audio_tokens_per_chunk,
            "chunked_av_tokens": t * cfg.combiner_tokens,
            "baseline_tokens": baseline.tokens,
            "chunked": times["chunked"],
            "baseline": times["baseline"],
            "chunked_ms_per_chunk": 1000 * times["chunked"]["median_s"] / t,
            "baseline_ms_per_chunk": 1000 * times["baseline"]["median_s"] / t,
            "baseline_over_chunked": times["baseline"]["median_s"] / times["chunked"]["median_s"],
            "attention_elements": elements,
            "attention_elements_ratio": elements["baseline"] / elements["chunked"],
        }
        results[str(t)] = r
        rows.append([t, baseline.tokens, 1000 * times["chunked"]["median_s"], r["chunked_ms_per_chunk"],
                     1000 * times["baseline"]["median_s"], r["baseline_ms_per_chunk"], r["baseline_over_chunked"],
                     elements["chunked"] / 1e6, elements["baseline"] / 1e6])
    first, last = results[str(chunks[0])], results[str(chunks[-1])]
    growth = chunks[-1] / chunks[0]
    summary = {
        "length_growth": growth,
        "chunked_time_growth": last["chunked"]["median_s"] / first["chunked"]["median_s"],
        "baseline_time_growth": last["baseline"]["median_s"] / first["baseline"]["median_s"],
    }
    cfg = MirasolConfig.preset("tiny", num_chunks=chunks[0], **overrides)
    result = {"overrides": overrides, "batch": batch, "repeats": repeats, "warmup": warmup,
              "baseline_depth": cfg.video_layers + cfg.combiner_layers + cfg.av_layers, "width": cfg.av_dim,
              "memory_note": "attention_elements are counted analytically (B x heads x Lq x Lk summed over "
                             "layers), not measured; SDPA's CPU kernels may not materialise these matrices, "
                             "but the compute scales with them",
              "results": results, "summary": summary}
    if not quiet:
        print_table(f"chunks: encode_media, tiny + {overrides}, batch {batch} (median of {repeats}); "
                    "attention elements counted, in millions",
                    ["T", "base tokens", "chunked ms", "ms/chunk", "baseline ms", "ms/chunk", "base/chunked",
                     "attn M chunked", "attn M base"], rows)
        print(f"  T x{growth:g}: chunked time x{summary['chunked_time_growth']:.2f}, "
              f"baseline time x{summary['baseline_time_growth']:.2f}")
    return result


# ------------------------------------------------------------------------------------------------
# 3. generate


def bench_generate(batch: int = 8, new_tokens: int = 32, prompt_len: int = 12, preset: str = "tiny",
                   repeats: int = 3, warmup: int = 1, overrides: dict | None = None, quiet: bool = False) -> dict:
    """Greedy generation of `new_tokens` tokens with and without the KV cache, from the same
    precomputed AV latents. EOS is disabled (eos_id=-1) so that every row runs the full length."""
    torch.manual_seed(0)
    cfg = MirasolConfig.preset(preset, **(overrides or {}))
    cfg = cfg.replace(max_text_len=max(cfg.max_text_len, prompt_len + new_tokens))
    model = Mirasol(cfg).eval()
    g = torch.Generator().manual_seed(1)
    video = torch.rand(batch, cfg.num_frames, 3, cfg.image_size, cfg.image_size, generator=g)
    audio = torch.randn(batch, cfg.n_mels, cfg.audio_frames, generator=g)
    prompts = torch.randint(4, cfg.vocab_size, (batch, prompt_len), generator=g)
    for row in range(1, batch, 2):  # ragged prompts: some rows are shorter (padding is repacked left)
        prompts[row, prompt_len - row % prompt_len:] = cfg.pad_token_id
    with torch.no_grad():
        latents = model.encode_media(video, audio)
    outputs = {}

    def run(use_cache: bool):
        ids = model.generate_from_latents(latents, prompts, new_tokens, eos_id=-1, use_cache=use_cache)
        outputs[use_cache] = ids
        return ids

    times = measure({"cached": lambda: run(True), "uncached": lambda: run(False)}, repeats, warmup)
    same = bool(torch.equal(outputs[True], outputs[False]))
    n = outputs[True].shape[1]
    result = {
        "preset": preset, "batch": batch, "new_tokens": n, "prompt_len": prompt_len, "repeats": repeats,
        "cached": times["cached"], "uncached": times["uncached"],
        "cached_ms_per_token": 1000 * times["cached"]["median_s"] / n,
        "uncached_ms_per_token": 1000 * times["uncached"]["median_s"] / n,
        "speedup": times["uncached"]["median_s"] / times["cached"]["median_s"],
        "identical_tokens": same,
    }
    if not quiet:
        print_table(f"generate: greedy, {preset} preset, batch {batch}, {n} new tokens (median of {repeats})",
                    ["KV cache", "total ms", "ms/token"],
                    [["yes", 1000 * times["cached"]["median_s"], result["cached_ms_per_token"]],
                     ["no", 1000 * times["uncached"]["median_s"], result["uncached_ms_per_token"]]])
        print(f"  speed-up {result['speedup']:.2f}x; cached == uncached tokens: {same}")
    return result
