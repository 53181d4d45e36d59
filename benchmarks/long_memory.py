"""Does the model answer about something far back in a long clip? A small training experiment.

Task ("flash colour"): every chunk shows grey noise and plays noise, except one chunk in which the
whole frame flashes one of 4 colours (and a tone of one of 4 pitches plays). The question asks for
the colour; the answer prior is 25 %. The tiny preset is trained on short clips (4 chunks) plus a
few long ones (16 chunks), then evaluated on 32-chunk clips (longer than anything seen in
training) with the flash d chunks before the end, for d in DISTANCES, with the full block-causal
AV model and with a window of W chunks. The text decoder reads the latents of every chunk, as
`mirasol ask --whole` does. With `--read last` the decoder reads only the last chunk's latents
(in training and evaluation), so the answer must reach it through the AV model's attention over
earlier chunks or through the TTM memory: that variant measures memory.

    PYTHONPATH=src python benchmarks/long_memory.py --steps 300 --out long_memory.json
    PYTHONPATH=src python benchmarks/long_memory.py --steps 300 --read last --out long_memory_last.json

Tensors are made directly (no mp4 files), so the experiment measures the model, not decoding.
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import torch

from mirasol import Mirasol, MirasolConfig
from mirasol.model import IGNORE_INDEX

COLOURS = torch.tensor([[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.1, 0.1, 1.0], [1.0, 1.0, 0.1]])
PROMPT = [1, 10, 11, 12, 3]  # bos, "what colour flashed?", sep (ids only: no tokenizer needed)
ANSWERS = [20, 21, 22, 23]
DISTANCES = (0, 1, 2, 4, 8, 16, 31)


def make_batch(cfg: MirasolConfig, chunks: int, batch: int, g: torch.Generator, distance: int | None = None):
    f, a = cfg.frames_per_chunk, cfg.audio_frames_per_chunk
    s = cfg.image_size
    video = 0.5 + 0.15 * torch.randn(batch, chunks * f, 3, s, s, generator=g)
    audio = torch.randn(batch, cfg.n_mels, chunks * a, generator=g)
    colour = torch.randint(0, 4, (batch,), generator=g)
    if distance is None:
        where = torch.randint(0, chunks, (batch,), generator=g)
    else:
        where = torch.full((batch,), chunks - 1 - distance)
    for i in range(batch):
        t, c = int(where[i]), int(colour[i])
        video[i, t * f:(t + 1) * f] = COLOURS[c][None, :, None, None]
        band = slice(4 + 6 * c, 8 + 6 * c)  # a "tone": loud mel bands that depend on the colour
        audio[i, band, t * a:(t + 1) * a] += 4.0
    video = video.clamp(0, 1)
    ids = torch.tensor([PROMPT + [ANSWERS[int(c)], cfg.eos_token_id] for c in colour])
    labels = ids.clone()
    labels[:, :len(PROMPT)] = IGNORE_INDEX
    return video, audio, ids, labels, colour


@torch.no_grad()
def accuracy(model: Mirasol, cfg: MirasolConfig, chunks: int, distance: int, window: int | None,
             n: int, seed: int, read: str = "all") -> float:
    g = torch.Generator().manual_seed(seed)
    video, audio, _, _, colour = make_batch(cfg, chunks, n, g, distance)
    prompt = torch.tensor([PROMPT] * n)
    scores = model.score_candidates(video, audio, prompt, [[[x] for x in ANSWERS]] * n, max_context_chunks=window,
                                    chunk_mask=last_only(n, chunks) if read == "last" else None)
    return (scores.argmax(-1) == colour).float().mean().item()


def last_only(batch: int, chunks: int) -> torch.Tensor:
    """chunk_mask letting the decoder read the last chunk's latents only."""
    return torch.arange(chunks).expand(batch, chunks) == chunks - 1


def run(combiner: str, steps: int, batch: int, long_every: int, window: int, eval_n: int, seed: int,
        read: str = "all") -> dict:
    torch.manual_seed(seed)
    cfg = MirasolConfig.preset("tiny", combiner=combiner, latent_loss_weight=0.1)
    model = Mirasol(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    began = time.perf_counter()
    losses = []
    for step in range(steps):
        chunks = 16 if long_every and step % long_every == long_every - 1 else 4
        video, audio, ids, labels, _ = make_batch(cfg, chunks, batch, g)
        lr = 3e-4 * min(1.0, (step + 1) / 50)
        for group in opt.param_groups:
            group["lr"] = lr
        if read == "last":  # the decoder reads the last chunk; the latent loss still covers every chunk
            z = model.combine(video, audio)
            h = model.av_model(z)
            hidden = model.text_decoder(ids, memory=h[:, -1], attention_mask=ids != cfg.pad_token_id)
            logits = model.text_decoder.logits(hidden)
            text_loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                                          ignore_index=IGNORE_INDEX)
            out = SimpleNamespace(text_loss=text_loss, loss=text_loss + cfg.latent_loss_weight
                                  * model.av_model.latent_loss(h, z))
        else:
            out = model(video, audio, ids, labels)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out.text_loss.item())
    train_s = time.perf_counter() - began
    model.eval()
    table = {}
    for w in (None, window):
        name = "full" if w is None else f"window{w}"
        table[name] = {str(d): accuracy(model, cfg, 32, d, w, eval_n, seed + 100 + d, read) for d in DISTANCES}
    short = {str(d): accuracy(model, cfg, 4, d, None, eval_n, seed + 200 + d, read) for d in (0, 3)}
    return {"combiner": combiner, "read": read, "steps": steps, "batch": batch, "train_s": train_s,
            "final_text_loss": sum(losses[-20:]) / min(20, len(losses)), "short_4_chunks": short,
            "long_32_chunks": table}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--long-every", type=int, default=4, help="every k-th batch has 16 chunks (0: never)")
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--eval-n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--combiners", default="transformer,ttm")
    p.add_argument("--read", choices=["all", "last"], default="all",
                   help="the decoder reads every chunk's latents (all) or only the last chunk's (last)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    results = []
    for combiner in args.combiners.split(","):
        r = run(combiner, args.steps, args.batch, args.long_every, args.window, args.eval_n, args.seed, args.read)
        results.append(r)
        print(json.dumps(r), flush=True)
    print(f"\naccuracy on 32-chunk clips by distance of the flash from the end (chunks); prior 0.25, "
          f"{args.eval_n} clips per cell")
    print("combiner     attention  " + "  ".join(f"d={d:<3}" for d in DISTANCES) + "  | 4-chunk clips")
    for r in results:
        for name, row in r["long_32_chunks"].items():
            print(f"{r['combiner']:<12} {name:<9}  " + "  ".join(f"{row[str(d)]:.2f} " for d in DISTANCES)
                  + f"  | {r['short_4_chunks']['0']:.2f} {r['short_4_chunks']['3']:.2f}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"args": vars(args), "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
