"""Why does counting colour changes over a long clip stay near its prior? Probes of what each
chunk's features hold about the changes, and where the decoder looks when it is asked to count.

    PYTHONPATH=src python benchmarks/count_probe.py --data WORLD --run RUN [--run RUN2 ...] [--init] [--out F.json]

WORLD is a long world folder (`mirasol synth --world long`, any `--seconds`); each clip is encoded
at one chunk per second. Three measurements per model:

change (per chunk)   is the object's colour in this chunk different from the previous chunk's?
                     Ridge probe, fitted on the val split's chunks, scored on the test split's, as
                     balanced accuracy (mean recall of "changed" and "same": about 1 in 8 chunks
                     changed, so plain accuracy would reward always saying "same"). Read from
                       combiner  the combiner's m tokens of this chunk alone (sees no other chunk)
                       latent    the AV model's m latents of this chunk (block-causal: it sees the
                                 earlier chunks, so it could compare)
                       pair      the combiner tokens of this chunk and the previous one side by
                                 side (the information is there; whether it is linear is the question)
count (per clip)     three / four / five changes, from the latents averaged over the clip's chunks
                     (what an even reading by the decoder gets) and from the last chunk's latents
                     (what a causal model could have carried forward). Fitted on the train split.
attention            for the color_changes questions: the share of the decoder's cross-attention
                     (mean over layers and heads, at the position that predicts the answer) on the
                     chunks where the colour changed, against the share an even reading gives.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from audio_probe import COLORS, ridge_accuracy  # benchmarks/ is the script's folder
from mirasol import Mirasol
from mirasol.media.clip import load_clip
from mirasol.model.chunks import split_chunks
from mirasol.run_dir import load_run

COUNTS = (3, 4, 5)


@torch.no_grad()
def encode(model: Mirasol, path: str, seconds: int) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = model.cfg.replace(num_chunks=seconds)
    clip = load_clip(path, cfg)
    v, a = split_chunks(clip.video[None], clip.audio[None], cfg)
    vt, at = model.modality_tokens(v, a)
    z = model.combiner(torch.cat([vt, at], dim=2))  # [1, T, m, D]
    return z[0], model.av_model(z)[0]


def changes(spec: dict) -> list[int]:
    colors = [COLORS.index(c) for c in spec["colors"]]
    return [0] + [int(a != b) for a, b in zip(colors, colors[1:])]


def balanced_accuracy(xtr, ytr, xte, yte, lam: float = 10.0) -> float:
    """Ridge with the classes weighted equally in the fit, scored as mean per-class recall."""
    mean, std = xtr.mean(0), xtr.std(0) + 1e-5
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    xtr = torch.cat([xtr, torch.ones(len(xtr), 1)], 1)
    xte = torch.cat([xte, torch.ones(len(xte), 1)], 1)
    weight = torch.where(ytr == 1, 0.5 / (ytr == 1).float().mean(), 0.5 / (ytr == 0).float().mean())[:, None]
    target = torch.nn.functional.one_hot(ytr, 2).float()
    w = torch.linalg.solve(xtr.T @ (weight * xtr) + lam * torch.eye(xtr.shape[1]), xtr.T @ (weight * target))
    pred = (xte @ w).argmax(1)
    return float(sum(((pred == c) & (yte == c)).sum() / (yte == c).sum() for c in (0, 1)) / 2)


def probe(model: Mirasol, data: Path, specs: list[dict], limit: int, fit_limit: int) -> dict:
    per_chunk: dict[str, dict[str, list]] = {"val": {}, "test": {}}
    per_clip: dict[str, dict[str, list]] = {"train": {}, "test": {}}
    for split, n in (("train", fit_limit), ("val", limit), ("test", limit)):
        for spec in [s for s in specs if s["split"] == split][:n]:
            z, h = encode(model, str(data / "clips" / f"{spec['clip']}.mp4"), spec["seconds"])
            zf, hf = z.flatten(1), h.flatten(1)
            if split in per_chunk:
                rows = per_chunk[split]
                rows.setdefault("combiner", []).append(zf[1:])
                rows.setdefault("latent", []).append(hf[1:])
                rows.setdefault("pair", []).append(torch.cat([zf[:-1], zf[1:]], 1))
                rows.setdefault("y", []).append(torch.tensor(changes(spec)[1:]))
            if split in per_clip:
                rows = per_clip[split]
                rows.setdefault("mean", []).append(hf.mean(0))
                rows.setdefault("last", []).append(hf[-1])
                rows.setdefault("y", []).append(COUNTS.index(sum(changes(spec))))
    out: dict[str, dict] = {"change": {}, "count": {}}
    ytr, yte = torch.cat(per_chunk["val"]["y"]), torch.cat(per_chunk["test"]["y"])
    for place in ("combiner", "latent", "pair"):
        out["change"][place] = balanced_accuracy(torch.cat(per_chunk["val"][place]), ytr,
                                                 torch.cat(per_chunk["test"][place]), yte)
    ytr, yte = torch.tensor(per_clip["train"]["y"]), torch.tensor(per_clip["test"]["y"])
    for place in ("mean", "last"):
        out["count"][place] = ridge_accuracy(torch.stack(per_clip["train"][place]), ytr,
                                             torch.stack(per_clip["test"][place]), yte, len(COUNTS), lam=100.0)
    return out


@torch.no_grad()
def attention_on_changes(model: Mirasol, tokenizer, data: Path, specs: dict[str, dict], limit: int) -> dict:
    """Share of the decoder's cross-attention on the changed chunks, for color_changes rows."""
    import torch.nn.functional as F

    from mirasol.data.manifest import prompt_text, read_manifest
    from mirasol.model import layers

    captured: list[torch.Tensor] = []
    original = F.scaled_dot_product_attention
    memory_len = [0]

    def spy(q, k, v, attn_mask=None, **kw):
        if k.shape[-2] == memory_len[0] and q.shape[-2] != memory_len[0]:
            scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            captured.append(scores.softmax(-1)[0, :, -1].mean(0))
        return original(q, k, v, attn_mask=attn_mask, **kw)

    rows = [r for r in read_manifest(data / "test.jsonl") if r.type == "color_changes"][:limit]
    m = model.cfg.combiner_tokens
    mass, uniform = [], []
    layers.F.scaled_dot_product_attention = spy
    try:
        for r in rows:
            spec = specs[Path(r.video).stem]
            t = spec["seconds"]
            clip = load_clip(r.video, model.cfg.replace(num_chunks=t))
            memory = model.encode_media(clip.video[None], clip.audio[None]).flatten(1, 2)
            memory_len[0] = t * m
            captured.clear()
            ids = torch.tensor([tokenizer.encode_prompt(prompt_text(r), model.cfg.max_text_len)])
            model.text_decoder(ids, memory=memory)
            per_chunk = torch.stack(captured).mean(0).reshape(t, m).sum(1)
            changed = [i for i, c in enumerate(changes(spec)) if c]
            mass.append(float(per_chunk[changed].sum()))
            uniform.append(len(changed) / t)
    finally:
        layers.F.scaled_dot_product_attention = original
    return {"mass": sum(mass) / len(mass), "uniform": sum(uniform) / len(uniform), "n": len(mass)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a long world folder (mirasol synth --world long)")
    parser.add_argument("--run", action="append", default=[], help="run directory (repeatable)")
    parser.add_argument("--init", action="store_true", help="also probe an untrained model (configs/tiny.yaml)")
    parser.add_argument("--clips", type=int, default=60, help="val and test clips for the chunk probes")
    parser.add_argument("--fit-clips", type=int, default=480, help="train clips for the clip-level count probe")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = Path(args.data)
    specs = json.loads((data / "world.json").read_text())["specs"]
    models = {}
    if args.init:
        from mirasol.run_config import load_run_config

        torch.manual_seed(0)
        models["init"] = (Mirasol(load_run_config("tiny").model).eval(), None)
    for run in args.run:
        model, tokenizer, _, _ = load_run(run)
        models[run] = (model.eval(), tokenizer)
    results = {}
    for name, (model, tokenizer) in models.items():
        results[name] = probe(model, data, specs, args.clips, args.fit_clips)
        if tokenizer is not None:
            results[name]["attention"] = attention_on_changes(model, tokenizer, data, {s["clip"]: s for s in specs},
                                                              args.clips)
        print(name, json.dumps(results[name]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
