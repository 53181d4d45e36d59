"""Where are the long world's audio events lost? Linear probes on each chunk's features.

    PYTHONPATH=src python benchmarks/audio_probe.py --data runs/long32 --run RUN [--run RUN2 ...] [--out F.json]

For every clip of the long world's val split (probe fitted) and test split (probe scored), each run
encodes the 32 chunks of the clip (load_clip at num_chunks=32, whatever the run was trained on) and
the probe reads, per chunk, from four places along the path:

    audio     the audio encoder's tokens of the chunk, projected (mean over tokens)
    video     the video encoder's tokens of the chunk, projected (mean over tokens)
    combiner  the combiner's m output tokens of the chunk (concatenated)
    latent    the AV model's m latents of the chunk (concatenated), with all earlier chunks in context

and asks: is a tone in this chunk (tone vs not, over all chunks), which pitch (low / mid / high,
over tone chunks), and, as the visual reference, the object's colour (4-way, over all chunks).
The probe is a ridge classifier on standardised features (one-hot least squares), so a high score
means the answer is linearly present in that chunk's features. A run at initialisation (`--init`)
shows what the untrained path keeps.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mirasol import Mirasol
from mirasol.media.clip import load_clip
from mirasol.model.chunks import split_chunks
from mirasol.run_dir import load_run

PITCHES = ("low", "mid", "high")
COLORS = ("red", "green", "blue", "yellow")


@torch.no_grad()
def chunk_features(model: Mirasol, path: str) -> dict[str, torch.Tensor]:
    cfg = model.cfg.replace(num_chunks=32)
    clip = load_clip(path, cfg)
    v, a = split_chunks(clip.video[None], clip.audio[None], cfg)
    vt, at = model.modality_tokens(v, a)  # [1, T, n, D]
    z = model.combiner(torch.cat([vt, at], dim=2))  # [1, T, m, D]
    h = model.av_model(z)
    return {"audio": at[0].mean(1), "video": vt[0].mean(1), "combiner": z[0].flatten(1), "latent": h[0].flatten(1)}


def labels(spec: dict) -> dict[str, list[int]]:
    tone = [0] * 32
    pitch = [-1] * 32
    for s, p in zip(spec["tones"], spec["pitches"]):
        tone[s] = 1
        pitch[s] = PITCHES.index(p)
    return {"tone": tone, "pitch": pitch, "color": [COLORS.index(c) for c in spec["colors"]]}


def ridge_accuracy(xtr, ytr, xte, yte, classes: int, lam: float = 10.0) -> float:
    mean, std = xtr.mean(0), xtr.std(0) + 1e-5
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    xtr = torch.cat([xtr, torch.ones(len(xtr), 1)], 1)
    xte = torch.cat([xte, torch.ones(len(xte), 1)], 1)
    target = torch.nn.functional.one_hot(ytr, classes).float()
    w = torch.linalg.solve(xtr.T @ xtr + lam * torch.eye(xtr.shape[1]), xtr.T @ target)
    return float(((xte @ w).argmax(1) == yte).float().mean())


def probe(model: Mirasol, data: Path, specs: dict[str, dict], limit: int) -> dict:
    feats: dict[str, dict[str, list]] = {"val": {}, "test": {}}
    labs: dict[str, dict[str, list]] = {"val": {}, "test": {}}
    for split in ("val", "test"):
        clips = [s for s in specs.values() if s["split"] == split][:limit]
        for spec in clips:
            f = chunk_features(model, str(data / "clips" / f"{spec['clip']}.mp4"))
            for k, x in f.items():
                feats[split].setdefault(k, []).append(x)
            for k, y in labels(spec).items():
                labs[split].setdefault(k, []).extend(y)
    out = {}
    for place in ("audio", "video", "combiner", "latent"):
        xtr, xte = torch.cat(feats["val"][place]), torch.cat(feats["test"][place])
        row = {}
        for task, classes in (("tone", 2), ("pitch", 3), ("color", 4)):
            ytr, yte = torch.tensor(labs["val"][task]), torch.tensor(labs["test"][task])
            ktr, kte = ytr >= 0, yte >= 0
            row[task] = ridge_accuracy(xtr[ktr], ytr[ktr], xte[kte], yte[kte], classes)
        out[place] = row
    return out


def _parse_world_args(parser: argparse.ArgumentParser, argv):
    """The arguments both probes share; returns (args, world folder, its clips' specs by clip id)."""
    parser.add_argument("--data", required=True, help="a long world folder (mirasol synth --world long)")
    parser.add_argument("--run", action="append", default=[], help="run directory (repeatable)")
    parser.add_argument("--clips", type=int, default=60, help="clips per split")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = Path(args.data)
    return args, data, {s["clip"]: s for s in json.loads((data / "world.json").read_text())["specs"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", action="store_true", help="also probe an untrained model (configs/tiny.yaml)")
    args, data, specs = _parse_world_args(parser, argv)
    models = {}
    if args.init:
        from mirasol.run_config import load_run_config

        torch.manual_seed(0)
        models["init"] = Mirasol(load_run_config("tiny").model).eval()
    for run in args.run:
        models[run] = load_run(run)[0].eval()
    results = {}
    for name, model in models.items():
        results[name] = probe(model, data, specs, args.clips)
        print(name, json.dumps(results[name]), flush=True)
    chance = {"tone": "majority ~0.91", "pitch": 1 / 3, "color": 0.25}
    if args.out:
        Path(args.out).write_text(json.dumps({"results": results, "chance": chance}, indent=2))
    return 0




# --- where the decoder looks --------------------------------------------------------------------
TARGETS = {  # family -> the chunks that hold its answer
    "first_pitch": lambda s: [s["tones"][0]],
    "last_pitch": lambda s: [s["tones"][-1]],
    "tone_count": lambda s: list(s["tones"]),
    "sync_color": lambda s: [s["noise"]],
    "start_color": lambda s: [0],
    "end_color": lambda s: [31],
}


@torch.no_grad()
def attention_mass(model: Mirasol, tokenizer, data: Path, specs: dict[str, dict], limit: int) -> dict:
    """Per family: the share of the decoder's cross-attention (mean over layers and heads, at the
    position that predicts the answer's first token) that falls on the chunks holding the answer,
    and the share a uniform reading would give."""
    import torch.nn.functional as F

    from mirasol.data.manifest import prompt_text, read_manifest
    from mirasol.model import layers

    captured: list[torch.Tensor] = []
    original = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        if k.shape[-2] == memory_len and q.shape[-2] != memory_len:
            scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            captured.append(scores.softmax(-1)[0, :, -1].mean(0))  # [Lk]
        return original(q, k, v, attn_mask=attn_mask, **kw)

    rows = [r for r in read_manifest(data / "test.jsonl") if r.type in TARGETS]
    by_clip: dict[str, list] = {}
    for r in rows:
        by_clip.setdefault(Path(r.video).stem, []).append(r)
    cfg = model.cfg.replace(num_chunks=32)
    m = model.cfg.combiner_tokens
    memory_len = 32 * m
    out: dict[str, list[tuple[float, float]]] = {}
    layers.F.scaled_dot_product_attention = spy
    try:
        for clip_name in list(by_clip)[:limit]:
            spec = specs[clip_name]
            clip = load_clip(by_clip[clip_name][0].video, cfg)
            memory = model.encode_media(clip.video[None], clip.audio[None]).flatten(1, 2)
            for r in by_clip[clip_name]:
                captured.clear()
                ids = torch.tensor([tokenizer.encode_prompt(prompt_text(r), model.cfg.max_text_len)])
                model.text_decoder(ids, memory=memory)
                weights = torch.stack(captured).mean(0)  # [32 * m]
                per_chunk = weights.reshape(32, m).sum(1)
                target = TARGETS[r.type](spec)
                out.setdefault(r.type, []).append((float(per_chunk[target].sum()), len(target) / 32))
    finally:
        layers.F.scaled_dot_product_attention = original
    return {fam: {"mass": sum(a for a, _ in v) / len(v), "uniform": sum(b for _, b in v) / len(v), "n": len(v)}
            for fam, v in out.items()}


def main_attention(argv=None) -> int:
    parser = argparse.ArgumentParser(description="decoder attention on the chunks that hold the answer")
    args, data, specs = _parse_world_args(parser, argv)
    results = {}
    for run in args.run:
        model, tokenizer, _, _ = load_run(run)
        results[run] = attention_mass(model.eval(), tokenizer, data, specs, args.clips)
        print(run, json.dumps(results[run]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main_attention(sys.argv[2:]) if sys.argv[1:2] == ["attention"] else main())
