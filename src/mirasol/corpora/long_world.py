"""The long audio-visual world: `mirasol synth --world long --out DIR [--num N] [--seed S] [--seconds 32]`.

A world that a small model cannot answer from one chunk: clips of 32 one-second segments (the
`tiny` preset's sampling gives 32 chunks of 1 s, twice the paper's 16), with events that come and
go over the whole clip, decoys among them. Written like the built-in world (mirasol.corpora.synth):
real mp4 files (H.264 + AAC), `train.jsonl`, `val.jsonl`, `test.jsonl` and `world.json`, where
every clip's events are listed with the seconds they occupy (`events`), so that tests can check
that each lands in the chunk the metadata says. Python: ``synthesize_long(out_dir, num, seed, seconds)``.

The clip (every event starts and ends inside one whole second, so chunk k sees exactly second k)
-------------------------------------------------------------------------------------------------
- Video, 64x64 at 8 fps: one object (square / circle / triangle, not asked about) drifting slowly.
  Its colour (red / green / blue / yellow) is constant within each second and changes at 3, 4 or
  5 of the second boundaries. A *flash*: the background turns light grey for one whole second.
  Decoy: a small white dot in a corner for 2-4 random seconds (never asked about).
- Audio, 16 kHz: 2, 3 or 4 *tones* (low 300 Hz / mid 1 kHz / high 3 kHz; 0.25-0.65 s of their
  second), each in its own second; one white-noise *burst* (0.2-0.8 s of its second). Decoys: 1-2
  quiet *chirps* (a 0.3 s sweep 500 -> 2000 Hz) in seconds without a tone or the noise; they are
  not tones and are not counted.
- The flash and the noise are at least a quarter of the clip apart; no tone shares the noise's second.

Question families (`type`; one row of each per clip, so `questions_per_clip=8` encodes a clip once)
---------------------------------------------------------------------------------------------------
============  =====================================  ================================  =========
type          needs                                  answers                           prior
============  =====================================  ================================  =========
start_color   video, the first second                red / green / blue / yellow       1/4
end_color     video, the last second                 red / green / blue / yellow       ~1/4
color_changes video, counting over the whole clip    three / four / five               1/3
sync_color    audio-visual binding: colour while     red / green / blue / yellow       ~1/4
              the noise played
first_pitch   audio, the first tone of the clip      low / mid / high                  1/3
last_pitch    audio, the last tone of the clip       low / mid / high                  ~1/3
tone_count    audio, counting over the whole clip    two / three / four                1/3
              (chirps are decoys)
order         a visual and an audio event far        flash / noise (row has choices)   1/2
              apart: which came first
============  =====================================  ================================  =========

Online families (`--online`; rows with `at`, answered from the video before `at` only: `mirasol
evaluate --online`). Four rows of each per clip, `at` a whole second drawn in each quarter of it:

============  =====================================  ================================
type          needs                                  answers
============  =====================================  ================================
color_now     video, the last second before `at`     red / green / blue / yellow
tones_so_far  audio, counting up to `at`             zero / one / two / three / four
burst_yet     audio, has the noise played by `at`    yes / no
============  =====================================  ================================

start_color, color_changes, first_pitch, tone_count and order are balanced within each split;
the others are balanced in expectation. The audio answers cannot be read from the video or the
other way round, except that sync_color needs both.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from mirasol.corpora.synth import (COLOR_NAMES, COLORS, PITCH_NAMES, PITCHES, SHAPES, _balanced, _ramp,
                                   clips_folder, render_all, split_sizes, write_splits)
from mirasol.errors import UsageError
from mirasol.media.writer import write_video

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")
DEFAULT_NUM = 600  # clips; 80 % train, 10 % val, 10 % test
DEFAULT_SECONDS = 32
FPS = 8
SIZE = 64
SAMPLE_RATE = 16000

COLOR_CHANGES = (3, 4, 5)
TONE_COUNTS = (2, 3, 4)
ORDERS = ("flash", "noise")
TONE_ON = (0.25, 0.65)  # seconds within its second
TONE_AMP = 0.5
NOISE_ON = (0.2, 0.8)
NOISE_STD = 0.25
CHIRP_ON = (0.3, 0.6)
CHIRP_AMP = 0.15
CHIRP_HZ = (500.0, 2000.0)
FLASH_GREY = 170

QUESTIONS: dict[str, tuple[str, ...]] = {
    "start_color": ("what color was the object at the start?", "what color is the object first?"),
    "end_color": ("what color was the object at the end?", "what color is the object last?"),
    "color_changes": ("how many times did the object change color?", "how often does the color change?"),
    "sync_color": ("what color was the object when the noise played?",
                   "what color is the object during the noise?"),
    "first_pitch": ("was the first tone low, mid or high?", "how high was the first tone?"),
    "last_pitch": ("was the last tone low, mid or high?", "how high was the last tone?"),
    "tone_count": ("how many tones did you hear?", "how many tones played?"),
    "order": ("which came first, the flash or the noise?", "what happened first, the flash or the noise?"),
}

FAMILIES: dict[str, dict[str, Any]] = {
    "start_color": {"needs": "video", "answers": list(COLOR_NAMES)},
    "end_color": {"needs": "video", "answers": list(COLOR_NAMES)},
    "color_changes": {"needs": "video, counting", "answers": [NUMBER_WORDS[n] for n in COLOR_CHANGES]},
    "sync_color": {"needs": "audio-visual binding", "answers": list(COLOR_NAMES)},
    "first_pitch": {"needs": "audio", "answers": list(PITCH_NAMES)},
    "last_pitch": {"needs": "audio", "answers": list(PITCH_NAMES)},
    "tone_count": {"needs": "audio, counting", "answers": [NUMBER_WORDS[n] for n in TONE_COUNTS]},
    "order": {"needs": "video + audio, order", "answers": list(ORDERS)},
}
ONLINE_QUESTIONS: dict[str, tuple[str, ...]] = {
    "color_now": ("what color is the object now?", "what color is the object at the moment?"),
    "tones_so_far": ("how many tones so far?", "how many tones have played so far?"),
    "burst_yet": ("has the noise burst happened yet?", "has the noise played yet?"),
}
ONLINE_FAMILIES: dict[str, dict[str, Any]] = {
    "color_now": {"needs": "video, the last second before `at`", "answers": list(COLOR_NAMES), "online": True},
    "tones_so_far": {"needs": "audio, counting up to `at`", "answers": list(NUMBER_WORDS[:max(TONE_COUNTS) + 1]),
                     "online": True},
    "burst_yet": {"needs": "audio, has the noise played by `at`", "answers": ["yes", "no"], "online": True},
}
ONLINE_TIMES = 4  # rows of each online family per clip: one `at` in each quarter of the clip
VIDEO_FAMILIES = ("start_color", "end_color", "color_changes")
AUDIO_FAMILIES = ("first_pitch", "last_pitch", "tone_count")


def plan_long(num: int, seed: int, seconds: int = DEFAULT_SECONDS) -> list[dict[str, Any]]:
    """The events of every clip, in clip order (train, then val, then test)."""
    if seed < 0:
        raise UsageError(f"--seed must be >= 0, got {seed}")
    if seconds < 8:
        raise UsageError(f"--seconds must be at least 8 for the long world, got {seconds}")
    gap = max(2, seconds // 4)  # the flash and the noise at least this many seconds apart
    specs: list[dict[str, Any]] = []
    index = 0
    for split_no, (split, n) in enumerate(split_sizes(num).items()):
        rng = np.random.default_rng([seed, 31337, split_no, seconds])
        start_color = _balanced(rng, len(COLOR_NAMES), n)
        n_changes = _balanced(rng, len(COLOR_CHANGES), n)
        n_tones = _balanced(rng, len(TONE_COUNTS), n)
        first_pitch = _balanced(rng, len(PITCH_NAMES), n)
        order = _balanced(rng, len(ORDERS), n)
        for j in range(n):
            crng = np.random.default_rng([seed, 271828, index, seconds])
            where = set(crng.choice(seconds - 1, size=COLOR_CHANGES[n_changes[j]], replace=False).tolist())
            colors = [int(start_color[j])]
            for b in range(1, seconds):
                if b - 1 in where:
                    others = [c for c in range(len(COLOR_NAMES)) if c != colors[-1]]
                    colors.append(int(others[crng.integers(len(others))]))
                else:
                    colors.append(colors[-1])
            # flash and noise: far apart, in the order drawn
            while True:
                a, b = sorted(crng.choice(seconds, size=2, replace=False).tolist())
                if b - a >= gap:
                    break
            flash, noise = (a, b) if ORDERS[order[j]] == "flash" else (b, a)
            free = [s for s in range(seconds) if s != noise]
            tones = sorted(crng.choice(free, size=TONE_COUNTS[n_tones[j]], replace=False).tolist())
            pitches = [PITCH_NAMES[first_pitch[j]]] + [PITCH_NAMES[int(p)] for p in
                                                       crng.integers(len(PITCH_NAMES), size=len(tones) - 1)]
            quiet = [s for s in free if s not in tones]
            chirps = sorted(crng.choice(quiet, size=int(crng.integers(1, 3)), replace=False).tolist())
            dots = sorted(crng.choice(seconds, size=int(crng.integers(2, 5)), replace=False).tolist())
            specs.append({
                "index": index, "clip": f"L{index:05d}", "split": split, "seconds": seconds,
                "shape": SHAPES[int(crng.integers(len(SHAPES)))],
                "colors": [COLOR_NAMES[c] for c in colors],
                "flash": int(flash), "noise": int(noise),
                "tones": [int(s) for s in tones], "pitches": pitches,
                "chirps": [int(s) for s in chirps], "dots": [int(s) for s in dots],
                "size": round(float(crng.uniform(0.34, 0.42)), 4),
                "drift": [round(float(v), 4) for v in crng.uniform(-0.15, 0.15, size=2)],
                "background": int(crng.integers(0, 41)),
                "color_jitter": crng.integers(-15, 16, size=3).tolist(),
                "freq_jitter": round(float(crng.uniform(-0.03, 0.03)), 4),
                "seed": [seed, index],
            })
            index += 1
    return specs


def answers_for(spec: dict[str, Any]) -> dict[str, str]:
    colors = spec["colors"]
    return {
        "start_color": colors[0],
        "end_color": colors[-1],
        "color_changes": NUMBER_WORDS[sum(a != b for a, b in zip(colors, colors[1:]))],
        "sync_color": colors[spec["noise"]],
        "first_pitch": spec["pitches"][0],
        "last_pitch": spec["pitches"][-1],
        "tone_count": NUMBER_WORDS[len(spec["tones"])],
        "order": "flash" if spec["flash"] < spec["noise"] else "noise",
    }


def questions_for(spec: dict[str, Any]) -> list[dict[str, Any]]:
    rng = np.random.default_rng([spec["seed"][0], 15485863, spec["index"], spec["seconds"]])
    video = f"clips/{spec['clip']}.mp4"
    rows = []
    for family, answer in answers_for(spec).items():
        templates = QUESTIONS[family]
        row = {"id": f"{spec['clip']}-{family}", "video": video, "task": "qa",
               "question": templates[int(rng.integers(len(templates)))], "answer": answer, "type": family,
               "clip": spec["clip"]}
        if family == "order":
            row["choices"] = list(ORDERS)
        rows.append(row)
    return rows


def online_answers(spec: dict[str, Any], at: int) -> dict[str, str]:
    """The online families' answers from the seconds before `at` (a whole second, 1 <= at <= seconds):
    every event of second s has ended by s + 1."""
    return {
        "color_now": spec["colors"][at - 1],
        "tones_so_far": NUMBER_WORDS[sum(s < at for s in spec["tones"])],
        "burst_yet": "yes" if spec["noise"] < at else "no",
    }


def online_questions_for(spec: dict[str, Any]) -> list[dict[str, Any]]:
    seconds = spec["seconds"]
    rng = np.random.default_rng([spec["seed"][0], 104729, spec["index"], seconds])
    quarters = [(1 + q * seconds // ONLINE_TIMES, (q + 1) * seconds // ONLINE_TIMES) for q in range(ONLINE_TIMES)]
    rows = []
    for lo, hi in quarters:
        at = int(rng.integers(lo, hi + 1))
        for family, answer in online_answers(spec, at).items():
            templates = ONLINE_QUESTIONS[family]
            rows.append({"id": f"{spec['clip']}-{family}-{at}", "video": f"clips/{spec['clip']}.mp4", "task": "qa",
                         "question": templates[int(rng.integers(len(templates)))], "answer": answer,
                         "type": family, "clip": spec["clip"], "at": float(at)})
    return rows


def events(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every event with its modality and the span in seconds it occupies (for alignment tests)."""
    out = [{"kind": "color", "modality": "video", "value": c, "start": float(s), "end": float(s + 1)}
           for s, c in enumerate(spec["colors"])]
    out.append({"kind": "flash", "modality": "video", "start": float(spec["flash"]), "end": float(spec["flash"] + 1)})
    out += [{"kind": "dot", "modality": "video", "start": float(s), "end": float(s + 1)} for s in spec["dots"]]
    out += [{"kind": "tone", "modality": "audio", "value": p, "start": s + TONE_ON[0], "end": s + TONE_ON[1]}
            for s, p in zip(spec["tones"], spec["pitches"])]
    out.append({"kind": "noise", "modality": "audio", "start": spec["noise"] + NOISE_ON[0],
                "end": spec["noise"] + NOISE_ON[1]})
    out += [{"kind": "chirp", "modality": "audio", "start": s + CHIRP_ON[0], "end": s + CHIRP_ON[1]}
            for s in spec["chirps"]]
    return out


# ------------------------------------------------------------------------------------------------
# rendering

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5


def render_frames(spec: dict[str, Any]) -> np.ndarray:
    """[seconds*FPS, SIZE, SIZE, 3] uint8."""
    seconds = spec["seconds"]
    n = seconds * FPS
    t = np.arange(n, dtype=np.float32) / (n - 1)
    s = spec["size"] * SIZE
    cx = SIZE / 2 + (t - 0.5) * spec["drift"][0] * SIZE
    cy = SIZE / 2 + (t - 0.5) * spec["drift"][1] * SIZE
    dx, dy = _XX[None] - cx[:, None, None], _YY[None] - cy[:, None, None]
    half = s / 2
    if spec["shape"] == "square":
        mask = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    elif spec["shape"] == "circle":
        mask = dx * dx + dy * dy <= half * half
    else:
        mask = (np.abs(dy) <= half) & (np.abs(dx) <= (dy + half) / 2)
    second = np.arange(n) // FPS
    jitter = np.asarray(spec["color_jitter"], dtype=np.int32)
    palette = np.stack([np.clip(np.asarray(COLORS[c]) + jitter, 0, 255) for c in spec["colors"]]).astype(np.uint8)
    background = np.full((n, 3), spec["background"], dtype=np.uint8)
    background[second == spec["flash"]] = FLASH_GREY
    frames = np.where(mask[..., None], palette[second][:, None, None, :], background[:, None, None, :])
    dot = np.isin(second, spec["dots"])
    frames[dot, 2:9, 2:9] = 255  # the decoy: a white dot in the top-left corner
    return frames.astype(np.uint8)


def render_audio(spec: dict[str, Any]) -> np.ndarray:
    sr = SAMPLE_RATE
    audio = np.zeros(spec["seconds"] * sr, dtype=np.float32)
    rng = np.random.default_rng([spec["seed"][0], 32452843, spec["index"], spec["seconds"]])
    on = int(round((TONE_ON[1] - TONE_ON[0]) * sr))
    env = _ramp(on, int(0.01 * sr))
    for s, pitch in zip(spec["tones"], spec["pitches"]):
        freq = PITCHES[pitch] * (1.0 + spec["freq_jitter"])
        i = int(round((s + TONE_ON[0]) * sr))
        audio[i:i + on] += TONE_AMP * np.sin(2 * np.pi * freq * np.arange(on) / sr).astype(np.float32) * env
    a, b = int(round((spec["noise"] + NOISE_ON[0]) * sr)), int(round((spec["noise"] + NOISE_ON[1]) * sr))
    noise = np.clip(rng.standard_normal(b - a).astype(np.float32) * NOISE_STD, -0.9, 0.9)
    audio[a:b] += noise * _ramp(b - a, int(0.02 * sr))
    c_on = int(round((CHIRP_ON[1] - CHIRP_ON[0]) * sr))
    tt = np.arange(c_on) / sr
    f0, f1 = CHIRP_HZ
    phase = 2 * np.pi * (f0 * tt + (f1 - f0) * tt * tt / (2 * tt[-1]))
    chirp = (CHIRP_AMP * np.sin(phase)).astype(np.float32) * _ramp(c_on, int(0.01 * sr))
    for s in spec["chirps"]:
        i = int(round((s + CHIRP_ON[0]) * sr))
        audio[i:i + c_on] += chirp
    return audio


def render_clip(spec: dict[str, Any], path: str | os.PathLike) -> str:
    write_video(path, render_frames(spec), FPS, render_audio(spec), SAMPLE_RATE)
    return str(path)


def _render_task(task: tuple[dict[str, Any], str]) -> str:
    return render_clip(*task)


def synthesize_long(out_dir: str | os.PathLike, num: int | None = None, seed: int = 0,
                    seconds: int = DEFAULT_SECONDS, workers: int | None = None, progress: bool = True,
                    online: bool = False) -> dict[str, Any]:
    """Write the long world to `out_dir` (the same keys as `synth.synthesize` returns). Clips
    already written by the same plan are kept (the folder is resumable). `online`: the manifests
    get the online families' rows too (with `at`)."""
    num = DEFAULT_NUM if num is None else int(num)
    out, clips_dir = clips_folder(out_dir)
    started = time.perf_counter()
    specs = plan_long(num, seed, seconds)
    # a clip is kept only if world.json says it was written from the same spec
    old = {}
    if (out / "world.json").exists():
        try:
            old = {s["clip"]: {k: v for k, v in s.items() if k != "events"}
                   for s in json.loads((out / "world.json").read_text())["specs"]}
        except (ValueError, KeyError):
            old = {}
    tasks = [(spec, str(clips_dir / f"{spec['clip']}.mp4")) for spec in specs
             if not (old.get(spec["clip"]) == spec and (clips_dir / f"{spec['clip']}.mp4").exists())]
    render_all(_render_task, tasks, workers, progress, "synth long", chunksize=2, min_parallel=4)
    questions = (lambda spec: questions_for(spec) + online_questions_for(spec)) if online else questions_for
    manifests, clips, rows_count, by_type = write_splits(out, specs, num, questions)
    world = {"generator": "mirasol.corpora.long_world", "version": 1, "num": num, "seed": seed,
             "seconds": seconds, "fps": FPS, "size": SIZE, "sample_rate": SAMPLE_RATE, "clips": clips,
             "rows": rows_count, "families": {**FAMILIES, **(ONLINE_FAMILIES if online else {})}, "online": online,
             "specs": [{**spec, "events": events(spec)} for spec in specs]}
    tmp = out / "world.json.part"
    tmp.write_text(json.dumps(world) + "\n", encoding="utf-8")
    os.replace(tmp, out / "world.json")
    elapsed = time.perf_counter() - started
    return {"out": str(out), "manifests": manifests, "clips": clips, "rows": rows_count, "by_type": by_type,
            "num": num, "seed": seed, "seconds": elapsed,
            "clips_per_second": len(tasks) / elapsed if elapsed > 0 else math.inf}
