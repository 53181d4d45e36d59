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

Then many clients at once (`clients`, default 1, 8 and 32 threads, each asking
`questions_per_client` free questions in turn about two videos, 30 s and 12 s, through
`Service.ask` as the HTTP routes do): questions per second and p50 / p95 latency with questions
answered one at a time (max batch 1) against batched (a 5 ms window, max batch 32), both on the
same loaded model, the modes taken in turn at each client count; a `bench step` figure (tiny,
batch 8, transformer) measured in the same run beside them.
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
QUESTIONS = [QUESTION, "what shape is the object?", "what color is the square?", "describe the video", None,
             "what happens?", "what do you hear?", "how many objects are there?"]


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


def _clients(service, video_ids: list[str], clients: int, per_client: int) -> dict:
    """`clients` threads start together, each asking `per_client` questions in turn."""
    import threading

    latencies: list[float] = []
    start = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        start.wait()
        for i in range(per_client):
            question = QUESTIONS[(c + i) % len(QUESTIONS)]
            t0 = time.perf_counter()
            service.ask(video_ids[(c + i) % len(video_ids)], question, evidence=False, modalities=False)
            latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    return {"questions": len(latencies), "questions_per_s": len(latencies) / wall, "wall_s": wall,
            "latencies_s": latencies}


def bench_serve_clients(service, video_ids: list[str], clients=(1, 8, 32), questions_per_client: int = 4,
                        window_s: float | None = None, max_batch: int | None = None, rounds: int = 3,
                        quiet: bool = False) -> dict:
    """Questions per second (median over `rounds`) and p50 / p95 latency (over all rounds' questions)
    at each client count, one at a time against batched (the server's default window and batch size
    unless given)."""
    from mirasol.perf.model_speed import bench_step
    from mirasol.serve.batcher import MAX_BATCH, WINDOW_S, Batcher

    window_s = WINDOW_S if window_s is None else window_s
    max_batch = MAX_BATCH if max_batch is None else max_batch

    def step_ms() -> float:
        return 1000 * bench_step(batch_sizes=(8,), combiners=("transformer",), questions_per_clip=(1,), repeats=3,
                                 warmup=1, quiet=True)["results"]["transformer/b8/k1"]["median_s"]

    step = [step_ms()]
    modes = {"one at a time": (0.0, 1), "batched": (window_s, max_batch)}
    runs: dict = {f"{mode}/{n}": [] for n in clients for mode in modes}
    for _ in range(rounds):  # the modes in turn, so that a change in background load hits both alike
        for n in clients:
            for mode, (window, size) in modes.items():
                service.batcher.close()
                service.batcher = Batcher(service.model, service.tokenizer, service.model_lock, window, size)
                _clients(service, video_ids, min(n, 2), 1)  # warm-up
                service.batcher.batches = service.batcher.largest = 0
                r = _clients(service, video_ids, n, questions_per_client)
                r.update(batches=service.batcher.batches, largest_batch=service.batcher.largest)
                runs[f"{mode}/{n}"].append(r)
    results = {}
    for name, rs in runs.items():
        latencies = sorted(x for r in rs for x in r.pop("latencies_s"))
        results[name] = {"questions": len(latencies), "rounds": rs,
                         "questions_per_s": statistics.median(r["questions_per_s"] for r in rs),
                         "p50_s": statistics.median(latencies),
                         "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
                         "largest_batch": max(r["largest_batch"] for r in rs)}
    step.append(step_ms())
    out = {"clients": list(clients), "questions_per_client": questions_per_client, "rounds": rounds,
           "window_ms": window_s * 1000, "max_batch": max_batch, "results": results,
           "bench_step_tiny_b8_ms_before_after": step}
    if not quiet:
        rows = []
        for n in clients:
            one, batched = results[f"one at a time/{n}"], results[f"batched/{n}"]
            rows.append([n, one["questions_per_s"], batched["questions_per_s"],
                         batched["questions_per_s"] / one["questions_per_s"], 1000 * one["p50_s"],
                         1000 * batched["p50_s"], 1000 * one["p95_s"], 1000 * batched["p95_s"],
                         batched["largest_batch"]])
        print_table(f"serve: concurrent clients, {questions_per_client} questions each ({rounds} rounds), one at a "
                    f"time vs batched ({window_s * 1000:g} ms window, max batch {max_batch}); bench step (tiny, "
                    f"batch 8) {step[0]:.0f} ms before, {step[1]:.0f} ms after", ["clients", "q/s one", "q/s batched", "speedup", "p50 ms one",
                                               "p50 ms batched", "p95 ms one", "p95 ms batched", "largest batch"],
                    rows)
    return out


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


def bench_serve(preset: str = "small", seconds: float = 30.0, questions: int = 10, quiet: bool = False,
                clients=(1, 8, 32), questions_per_client: int = 4, rounds: int = 3) -> dict:
    root = work_dir() / f"serve-{preset}"
    run = _untrained_run(root / "run", preset)
    video = write_test_video(root / f"video_{seconds:g}s.mp4", seconds, (320, 240), fps=25)
    # the isolation's cost per upload: the decoder in-process and sandboxed, alternately, the
    # fastest of two rounds each (the first round also pays the process's one-time start-up costs)
    decoder_rounds = {True: [], False: []}
    for _ in range(2):
        for sandbox in (False, True):
            decoder_rounds[sandbox].append(_encode_once(run, video, root / f"cache-{sandbox}", sandbox=sandbox))
    probe_in, encoded_in = min(r[2] for r in decoder_rounds[False]), min(r[3] for r in decoder_rounds[False])
    service, vid, probe_s, encoded, _ = min(decoder_rounds[True], key=lambda r: r[3])
    probe_s = min(r[2] for r in decoder_rounds[True])
    cpu_in, cpu_s = min(r[4] for r in decoder_rounds[False]), min(r[4] for r in decoder_rounds[True])
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
    if clients:
        second = write_test_video(root / f"video_{seconds * 0.4:g}s.mp4", seconds * 0.4, (320, 240), fps=25)
        other = service.submit_file(second, second.name, owned=False)["id"]
        while service.status(other)["state"] not in ("ready", "failed"):
            time.sleep(0.05)
        result["concurrent"] = bench_serve_clients(service, [vid, other], clients, questions_per_client,
                                                   rounds=rounds, quiet=quiet)
    for r in decoder_rounds[True] + decoder_rounds[False]:
        r[0].batcher.close()
    return result
