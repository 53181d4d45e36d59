"""Pretrained text backbone: frozen + LoRA against full fine-tuning (needs the `hf` extra)."""

from __future__ import annotations


import torch

from mirasol.config import MirasolConfig
from mirasol.model.mirasol import Mirasol
from mirasol.perf.common import _train_step, measure, print_table, random_batch


# ------------------------------------------------------------------------------------------------
# 6. lora (needs the `hf` extra)


def bench_lora(batch: int = 8, preset: str = "small", n_layer: int = 12, n_embd: int = 768, n_head: int = 12,
               vocab: int = 50257, repeats: int = 3, warmup: int = 1, lora_r: int = 8, quiet: bool = False) -> dict:
    """A GPT-2-sized text backbone (random weights, built in memory) on `preset` media: frozen LM +
    LoRA (r=8 on c_attn) against full fine-tuning. Parameters (trainable / total) and step time
    (forward + backward + AdamW over the trainable parameters), side by side."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from mirasol.model.backbones import LMDecoder
    from mirasol.model.pretrained import apply_freeze_and_lora, parameter_counts

    variants, meta = {}, {}
    for name in ("full", "frozen+lora"):
        torch.manual_seed(0)
        cfg = MirasolConfig.preset(preset, text_backbone="<in memory>", vocab_size=vocab + 2, pad_token_id=vocab,
                                   sep_token_id=vocab + 1, bos_token_id=vocab - 1, eos_token_id=vocab - 1)
        lm = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_layer=n_layer, n_embd=n_embd, n_head=n_head))
        model = Mirasol(cfg, text_decoder=LMDecoder(cfg, lm)).train()
        if name != "full":
            apply_freeze_and_lora(model, ["text_backbone"], {"r": lora_r, "alpha": 2 * lora_r, "targets": ["c_attn"]})
        trainable, total = parameter_counts(model)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        data = random_batch(cfg, batch)
        data["input_ids"] = data["input_ids"] % vocab
        variants[name] = (lambda m=model, o=optimizer, b=data: _train_step(m, o, b))
        meta[name] = {"trainable": trainable, "total": total}
    times = measure(variants, repeats, warmup)
    rows = []
    for name, t in times.items():
        meta[name].update(t)
        rows.append([name, meta[name]["total"] / 1e6, meta[name]["trainable"] / 1e6, 1000 * t["median_s"],
                     1000 * t["min_s"]])
    if not quiet:
        print_table(f"lora: {preset} media + GPT-2-sized decoder ({n_layer} x {n_embd}, random weights), batch {batch}, "
                    f"median of {repeats}", ["variant", "total M", "trainable M", "median ms", "min ms"], rows)
    return {"preset": preset, "batch": batch, "n_layer": n_layer, "n_embd": n_embd, "lora_r": lora_r,
            "repeats": repeats, "results": meta}
