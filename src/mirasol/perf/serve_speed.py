"""`mirasol bench serve`: what encoding a video once buys the server (mirasol/serve).

The first question about a video pays for decoding it and streaming every chunk through the
encoders, the combiner and the AV model; every later question reads the stored chunk latents and
runs only the text decoder. Measured on the server's own Service (the code behind `mirasol
serve`, without HTTP), with an untrained model of the preset (the cost does not depend on the
weights), on a synthetic `seconds`-long H.264 + AAC video:

- first: upload -> encoded -> first answer, in seconds;
- later: each later question (free answer, no evidence, no controls), median seconds;
- later_full: a later question with the per-chunk evidence and both modality controls, as the page asks;
- speedup = first / later; questions per second about one video = 1 / later.
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

import torch

from mirasol.perf.common import print_table, work_dir
from mirasol.perf.media import write_test_video

QUESTION = "what is cooked?"


def _untrained_run(folder: Path, preset: str) -> Path:
    from mirasol.data.tokenizer import MirasolTokenizer
    from mirasol.model import Mirasol
    from mirasol.run_config import load_run_config
    from mirasol.run_dir import write_run_files

    if (folder / "model.safetensors").exists():
        return folder
    texts = [QUESTION, "a pancake", "an egg", "describe the video", "what shape is the object?"]
    tokenizer = MirasolTokenizer.train(texts, vocab_size=300)
    config = load_run_config(None, [f"model.preset={preset}"])
    write_run_files(folder, config.to_dict(), tokenizer, {"labels": [], "answer_prior": {}, "num_samples": 0,
                                                          "max_answer_tokens": 8})
    torch.manual_seed(0)
    Mirasol.build(config.model).save_pretrained(folder)
    return folder


def bench_serve(preset: str = "small", seconds: float = 30.0, questions: int = 10, quiet: bool = False) -> dict:
    from mirasol.serve.service import Service

    root = work_dir() / f"serve-{preset}"
    run = _untrained_run(root / "run", preset)
    video = write_test_video(root / f"video_{seconds:g}s.mp4", seconds, (320, 240), fps=25)
    cache = root / "cache"
    shutil.rmtree(cache, ignore_errors=True)  # the first question must encode
    service = Service(run, cache)
    began = time.perf_counter()
    submitted = service.submit_file(video, video.name, owned=False)
    while service.status(submitted["id"])["state"] not in ("ready", "failed"):
        time.sleep(0.05)
    status = service.status(submitted["id"])
    if status["state"] != "ready":
        raise RuntimeError(f"bench serve: the video could not be encoded: {status}")
    encoded = time.perf_counter() - began
    service.ask(submitted["id"], QUESTION, evidence=False, modalities=False)
    first = time.perf_counter() - began
    later = []
    for _ in range(questions):
        t0 = time.perf_counter()
        service.ask(submitted["id"], QUESTION, evidence=False, modalities=False)
        later.append(time.perf_counter() - t0)
    full = []
    for _ in range(max(1, questions // 4)):
        t0 = time.perf_counter()
        service.ask(submitted["id"], QUESTION)
        full.append(time.perf_counter() - t0)
    later_s, full_s = statistics.median(later), statistics.median(full)
    result = {"preset": preset, "video_seconds": seconds, "chunks": status["chunks_done"],
              "encode_s": encoded, "first_question_s": first, "later_question_s": later_s,
              "later_question_with_evidence_s": full_s, "speedup": first / later_s,
              "questions_per_s": 1.0 / later_s, "questions": questions}
    if not quiet:
        print_table(f"serve: a {seconds:g} s video ({status['chunks_done']} chunks), {preset} preset, untrained",
                    ["question", "seconds", "questions/s"],
                    [["first (decode + encode + answer)", first, 1.0 / first],
                     [f"later (median of {questions})", later_s, 1.0 / later_s],
                     ["later, with evidence + controls", full_s, 1.0 / full_s]])
        print(f"  later questions are {result['speedup']:.1f}x faster than the first")
    return result
