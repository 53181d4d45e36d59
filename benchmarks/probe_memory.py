"""Linear probes on what the text decoder reads: is a question family's answer in the memory?

When a family sits at its answer prior for thousands of steps, this tells the two causes apart:
the media path has not encoded the answer (the probes fail too), or the decoder has not yet learnt
to read it out (the probes succeed). Each probe is a logistic regression on standardised features,
fitted on the train manifest's clips and scored on the validation manifest's:

  tokens  every video token of every chunk, concatenated (before the combiner)
  z       every combiner output, concatenated
  h       every AV latent, concatenated (the decoder's memory)
  h_mean  the mean of all latents: what uniform cross-attention hands the decoder
  h_chunk the mean latent of each chunk, concatenated
  h_last  the mean latent of the last chunk

    python benchmarks/probe_memory.py --data quickstart/data --run quickstart/run
    python benchmarks/probe_memory.py --data quickstart/data --config tiny   # a model at its init

Needs the clips in the cache (`mirasol prepare` or a training run on the same manifests).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from mirasol.data.cache import ClipCache, clip_key, default_cache_dir
from mirasol.data.manifest import read_manifest
from mirasol.model import Mirasol
from mirasol.model.chunks import split_chunks
from mirasol.run_config import load_run_config


def readouts(model: Mirasol, cache: ClipCache, samples, batch: int = 100) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    video_tokens = int(np.prod(model.video_encoder.grid))
    out: dict[str, list] = {k: [] for k in ("tokens", "z", "h", "h_mean", "h_chunk", "h_last")}
    with torch.no_grad():
        for i in range(0, len(samples), batch):
            clips = [cache.get(clip_key(s.video, s.start, s.end)) for s in samples[i:i + batch]]
            video = torch.stack([torch.from_numpy(np.array(v)).float() / 255 for v, _, _ in clips])
            audio = torch.stack([torch.from_numpy(np.asarray(a, dtype=np.float32)) for _, a, _ in clips])
            tokens = model.chunk_tokens(*split_chunks(video, audio, cfg))
            z = model.combiner(tokens)
            h = model.av_model(z)
            for key, value in (("tokens", tokens[:, :, :video_tokens].flatten(1)), ("z", z.flatten(1)),
                               ("h", h.flatten(1)), ("h_mean", h.mean((1, 2))), ("h_chunk", h.mean(2).flatten(1)),
                               ("h_last", h[:, -1].mean(1))):
                out[key].append(value)
    return {k: torch.cat(v) for k, v in out.items()}


def probe(x: torch.Tensor, y: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor, steps: int = 300) -> tuple[float, float]:
    """Train / validation accuracy of a logistic regression on standardised features."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    x, x_val = (x - mean) / std, (x_val - mean) / std
    linear = torch.nn.Linear(x.shape[1], int(max(y.max(), y_val.max())) + 1)
    opt = torch.optim.Adam(linear.parameters(), lr=1e-3, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(linear(x), y).backward()
        opt.step()
    with torch.no_grad():
        return ((linear(x).argmax(1) == y).float().mean().item(), (linear(x_val).argmax(1) == y_val).float().mean().item())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder with train.jsonl and val.jsonl (e.g. quickstart/data)")
    parser.add_argument("--run", help="a trained run directory or checkpoint folder (model.safetensors + config.json)")
    parser.add_argument("--config", default="tiny", help="without --run: a model at its init, from this config")
    parser.add_argument("--seed", type=int, default=0, help="without --run: the init's seed")
    parser.add_argument("--family", action="append", help="question type(s) to probe (default: direction, color_changes)")
    parser.add_argument("overrides", nargs="*", help="config overrides for --config, e.g. model.combiner_layers=1")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.run:
        model = Mirasol.from_pretrained(args.run)
    else:
        torch.manual_seed(args.seed)
        model = Mirasol(load_run_config(args.config, args.overrides).model).eval()
    data = Path(args.data)
    cache = ClipCache(default_cache_dir(data / "train.jsonl", model.cfg, "auto"), model.cfg, store="auto")
    for family in args.family or ["direction", "color_changes"]:
        split = {}
        for name in ("train", "val"):
            samples = [s for s in read_manifest(data / f"{name}.jsonl") if s.type == family]
            if not samples:
                raise SystemExit(f"{data / f'{name}.jsonl'} has no rows of type {family!r}")
            split[name] = samples
        answers = sorted({s.answer for s in split["train"]})
        labels = {n: torch.tensor([answers.index(s.answer) if s.answer in answers else -1 for s in split[n]])
                  for n in split}
        feats = {n: readouts(model, cache, split[n]) for n in split}
        keep = labels["val"] >= 0
        print(f"{family} ({len(split['train'])} train / {len(split['val'])} val clips, {len(answers)} answers, "
              f"chance about {1 / len(answers):.2f}):")
        for key in feats["train"]:
            train_acc, val_acc = probe(feats["train"][key], labels["train"], feats["val"][key][keep], labels["val"][keep])
            print(f"  {key:<8} train {train_acc:.2f}  val {val_acc:.2f}", flush=True)


if __name__ == "__main__":
    main()
