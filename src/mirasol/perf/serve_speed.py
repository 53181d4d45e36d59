"""`mirasol bench serve`: what encoding a video once buys the server (mirasol/serve).

The first question about a video pays for decoding it and streaming every chunk through the
encoders, the combiner and the AV model; every later question reads the stored chunk latents and
runs only the text decoder. Measured on the server's own Service (the code behind `mirasol
serve`, without HTTP), with an untrained model of the preset (the cost does not depend on the
weights), on a synthetic `seconds`-long H.264 + AAC video:

- first: upload -> encoded -> first answer, in seconds;
- later: each later question (free answer, no evidence, no controls), median seconds;
- later_full: a later question with the per-chunk evidence and both modality controls, as the page asks;
- speedup = first / later; questions per second about one video = 1 / later;
- the decoder's isolation: the probe and upload -> encoded with the decoder in a sandboxed worker
  (serve/sandbox.py, as the server runs) and in the server's own process, side by side.
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


def _encode_once(run: Path, video: Path, cache: Path, sandbox: bool, probes: int = 5) -> tuple:
    """A fresh Service (sandboxed decoder or not): (service, id, probe seconds (median of `probes`),
    seconds from the upload to encoded, CPU seconds of the upload: the server's and its workers')."""
    from mirasol.serve.service import Service

    shutil.rmtree(cache, ignore_errors=True)  # the first question must encode
    service = Service(run, cache, sandbox=sandbox)
    probe_times = []
    for _ in range(probes):
        t0 = time.perf_counter()
        service._probe(video)
        probe_times.append(time.perf_counter() - t0)
    began, cpu = time.perf_counter(), time.process_time() + service.sandbox.worker_cpu_s
    submitted = service.submit_file(video, video.name, owned=False)
    while service.status(submitted["id"])["state"] not in ("ready", "failed"):
        time.sleep(0.01)
    cpu = time.process_time() + service.sandbox.worker_cpu_s - cpu
    status = service.status(submitted["id"])
    if status["state"] != "ready":
        raise RuntimeError(f"bench serve: the video could not be encoded: {status}")
    return service, submitted["id"], statistics.median(probe_times), time.perf_counter() - began, cpu


def bench_serve(preset: str = "small", seconds: float = 30.0, questions: int = 10, quiet: bool = False) -> dict:
    root = work_dir() / f"serve-{preset}"
    run = _untrained_run(root / "run", preset)
    video = write_test_video(root / f"video_{seconds:g}s.mp4", seconds, (320, 240), fps=25)
    # the isolation's cost per upload: the decoder in-process and sandboxed, alternately, the
    # fastest of two rounds each (the first round also pays the process's one-time start-up costs)
    rounds = {True: [], False: []}
    for _ in range(2):
        for sandbox in (False, True):
            rounds[sandbox].append(_encode_once(run, video, root / f"cache-{sandbox}", sandbox=sandbox))
    probe_in, encoded_in = min(r[2] for r in rounds[False]), min(r[3] for r in rounds[False])
    service, vid, probe_s, encoded, _ = min(rounds[True], key=lambda r: r[3])
    probe_s = min(r[2] for r in rounds[True])
    cpu_in, cpu_s = min(r[4] for r in rounds[False]), min(r[4] for r in rounds[True])
    began = time.perf_counter()
    service.ask(vid, QUESTION, evidence=False, modalities=False)
    first = encoded + time.perf_counter() - began
    later = []
    for _ in range(questions):
        t0 = time.perf_counter()
        service.ask(vid, QUESTION, evidence=False, modalities=False)
        later.append(time.perf_counter() - t0)
    full = []
    for _ in range(max(1, questions // 4)):
        t0 = time.perf_counter()
        service.ask(vid, QUESTION)
        full.append(time.perf_counter() - t0)
    later_s, full_s = statistics.median(later), statistics.median(full)
    chunks = service.status(vid)["chunks_done"]
    cost = (probe_s + encoded) - (probe_in + encoded_in)
    first_in = encoded_in + (first - encoded)  # the same answer after the in-process encoding
    result = {"preset": preset, "video_seconds": seconds, "chunks": chunks,
              "encode_s": encoded, "first_question_s": first, "later_question_s": later_s,
              "later_question_with_evidence_s": full_s, "speedup": first / later_s,
              "questions_per_s": 1.0 / later_s, "questions": questions, "decoder": service.sandbox.isolation,
              "probe_s": probe_s, "probe_in_process_s": probe_in, "encode_in_process_s": encoded_in,
              "isolation_cost_s": cost, "speedup_decoder_in_process": first_in / later_s,
              "upload_cpu_s": cpu_s, "upload_cpu_in_process_s": cpu_in}
    if not quiet:
        print_table(f"serve: a {seconds:g} s video ({chunks} chunks), {preset} preset, untrained",
                    ["question", "seconds", "questions/s"],
                    [["first (decode + encode + answer)", first, 1.0 / first],
                     [f"later (median of {questions})", later_s, 1.0 / later_s],
                     ["later, with evidence + controls", full_s, 1.0 / full_s]])
        print(f"  later questions are {result['speedup']:.1f}x faster than the first")
        print_table("serve: the upload's decoder, sandboxed worker against in-process (best of 2)",
                    ["step", "sandboxed s", "in-process s"],
                    [["probe (median of 5)", probe_s, probe_in], ["upload -> encoded", encoded, encoded_in],
                     ["upload -> encoded, CPU s (server + worker)", cpu_s, cpu_in]])
        print(f"  the sandbox costs {cost:+.3f} s per upload (probe + encoding; the worker decodes while the server "
              f"encodes); decoder: {service.sandbox.isolation}")
        print(f"  with the decoder in-process the first question takes {first_in:.2f} s: "
              f"{result['speedup_decoder_in_process']:.1f}x the later ones")
    return result
