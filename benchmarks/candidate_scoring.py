"""How many rows should one `score_candidates` call take when `predict` scores closed-set labels?

    python benchmarks/candidate_scoring.py [--repeats 5]

`predict` scores rows that share one option set (a classify task's labels, a multiple-choice
question's choices) together, at most `mirasol.eval.predict.MAX_SCORED_SEQUENCES` prompt +
candidate sequences per decoder call. This times `predict` on 32 classify rows of the `tiny`
preset (random weights: only the time matters) for a small label set (9, like the quickstart's)
and a large one (309, like VGGSound's), with 1 to 32 rows per call, and checks that every batching
gives the same answers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mirasol import Mirasol, MirasolConfig
from mirasol.data.manifest import Sample, prompt_text
from mirasol.data.tokenizer import MirasolTokenizer
from mirasol.eval import predict as predict_mod

WORDS = ["dog", "cat", "car", "bird", "engine", "piano", "guitar", "rain", "wind", "crowd", "train", "bell",
         "drum", "horn", "water", "baby", "siren", "clock"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    labels_all = [f"{a} {b}" for a in WORDS for b in WORDS if a != b][:309]
    cfg = MirasolConfig.preset("tiny")
    torch.manual_seed(0)
    model = Mirasol(cfg).eval()
    tok = MirasolTokenizer.train(labels_all, vocab_size=cfg.vocab_size)
    video = torch.rand(32, cfg.num_frames, 3, cfg.image_size, cfg.image_size)
    audio = torch.randn(32, cfg.n_mels, cfg.audio_frames)
    default = predict_mod.MAX_SCORED_SEQUENCES
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; predict on 32 classify rows, tiny preset; "
          f"median of {args.repeats}")
    print(f"{'labels':>7} {'rows/call':>10} {'ms':>7}")
    for n in (9, 309):
        labels = labels_all[:n]
        samples = [Sample(id=str(i), video="v", task="classify", answer=labels[i % n]) for i in range(32)]
        prompt_ids = torch.tensor([tok.encode_prompt(prompt_text(samples[0]), cfg.max_text_len)] * 32)
        answers = set()
        for rows in (1, 2, 4, 8, 32, None):
            predict_mod.MAX_SCORED_SEQUENCES = rows * n if rows else default

            def run():
                return predict_mod.predict(model, tok, video, audio, prompt_ids, samples, labels=labels)

            answers.add(tuple(run()))  # warm-up
            times = []
            for _ in range(args.repeats):
                began = time.perf_counter()
                run()
                times.append(time.perf_counter() - began)
            label = str(rows) if rows else f"default ({max(1, default // n)})"
            print(f"{n:>7} {label:>10} {1000 * statistics.median(times):>7.0f}")
        print(f"{'':>7} same answers at every batching: {len(answers) == 1}")
    predict_mod.MAX_SCORED_SEQUENCES = default


if __name__ == "__main__":
    main()
