"""The built-in audio-visual world: `mirasol synth --out DIR [--num N] [--seed S]`.

Writes real mp4 files (H.264 video + AAC audio) and `train.jsonl`, `val.jsonl`, `test.jsonl`
manifests (docs/design.md rows), plus `world.json` (the answer sets, counts and settings). The same
seed gives the same manifests and the same video/audio content, whatever the number of workers.
Python: ``synthesize(out_dir, num=1200, seed=0) -> dict``.

The clip
--------
Every clip lasts 4 s, 64x64 RGB at 8 fps, 16 kHz mono audio, and is organised in four one-second
segments (the `tiny` preset's four 1 s chunks; state changes happen on whole seconds, so every
chunk sees one state whatever the frame phase of the 2 fps sampling).

- Video: one big object (a *square*, *circle* or *triangle*, ~40 % of the frame) on a dark
  background, gliding steadily *left*, *right*, *up* or *down* across the frame over the 4 s.
  Its colour (*red*, *green*, *blue*, *yellow*) is constant within each second and changes at 1, 2
  or 3 of the three second boundaries (to a different colour each time).
- Audio: a train of 1-4 beeps (150 ms on, 250 ms off) of a *low* (300 Hz), *mid* (1 kHz) or
  *high* (3 kHz) tone, and one loud white-noise burst that fills the middle of exactly one second
  (k + 0.2 .. k + 0.8 s). The beeps lie wholly before or wholly after the noise.

Question families (`type`; one manifest row of each per clip; answers; answer prior)
---------------------------------------------------------------------------------------
================  ==============  ==========================================  =================
type              needs           answers                                     prior (about)
================  ==============  ==========================================  =================
shape             video           square / circle / triangle                  1/3
direction         video + time    left / right / up / down                    1/4
pitch             audio           low / mid / high                            1/3
beep_count        audio + time    one / two / three / four                    1/4
sync_color        audio+video     colour during the noise burst               ~1/4
                  in sync         (red / green / blue / yellow)
start_color       video, memory   colour in the first second                  1/4
end_color         video, time     colour in the last second                   ~1/4
color_changes     video, count    how many times the colour changed:          1/3
                  across chunks   one / two / three
order             audio, time     which came first: beeps / noise             1/2
                                  (row carries choices ["beeps", "noise"])
caption           video + audio   "<start colour> <shape> moves <direction>    ~1/144
  (task caption)                  with <pitch> beeps"
classify          video + audio   "<pitch> <shape>" (9 labels)                1/9
  (task classify)
================  ==============  ==========================================  =================

Shape x pitch (jointly), direction, beep count, order, start colour and number of colour changes
are assigned balanced within each split (every answer equally often, up to rounding); the other
answers follow from them and are balanced in expectation. No audio answer can be read from the
video or the other way round (the variables are drawn independently; only the noise second is
constrained by where the beep train fits).

Sizes are chosen for the `tiny` preset (32x32 frames at 2 fps, 16 kHz audio, 32 log-mel bins,
10 ms hop): the object spans ~13 px at 32x32, each colour lasts 1 s (two sampled frames), the
three tones are > 5 mel bins apart, beeps are 15 hops long with 25-hop gaps, and every audio event
stays >= 0.1 s away from the clip edges so AAC's encoder delay cannot push it out.
"""

from __future__ import annotations

import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from mirasol.errors import UsageError
from mirasol.media.writer import write_video

# ------------------------------------------------------------------------------------------------
# the world's constants

DEFAULT_NUM = 1200  # clips; 80 % train, 10 % val, 10 % test
SPLITS = (("train", 0.8), ("val", 0.1), ("test", 0.1))

SECONDS = 4
FPS = 8
SIZE = 64
SAMPLE_RATE = 16000

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 255),
    "yellow": (240, 220, 40),
}
COLOR_NAMES = tuple(COLORS)
SHAPES = ("square", "circle", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
PITCHES: dict[str, float] = {"low": 300.0, "mid": 1000.0, "high": 3000.0}
PITCH_NAMES = tuple(PITCHES)
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
BEEP_COUNTS = (1, 2, 3, 4)
COLOR_CHANGES = (1, 2, 3)
ORDERS = ("beeps", "noise")  # which came first

BEEP_ON = 0.15  # seconds
BEEP_PERIOD = 0.40  # on + off
BEEP_AMP = 0.5
NOISE_START, NOISE_END = 0.2, 0.8  # within its second
NOISE_STD = 0.25
EDGE = 0.15  # audio events keep this far from the clip's end (0.05 from its start)
GAP = 0.1  # between the beep train and the noise burst

# Question templates per family (a paraphrase is drawn per row).
QUESTIONS: dict[str, tuple[str, ...]] = {
    "shape": ("what shape is the object?", "which shape do you see?"),
    "direction": ("which way does the object move?", "in which direction is the object moving?"),
    "pitch": ("is the beep low, mid or high?", "how high is the tone of the beeps?"),
    "beep_count": ("how many beeps do you hear?", "how many times does it beep?"),
    "sync_color": ("what color was the object when the noise played?",
                   "what color is the object during the noise?"),
    "start_color": ("what color was the object at the start?", "what color is the object first?"),
    "end_color": ("what color was the object at the end?", "what color is the object last?"),
    "color_changes": ("how many times did the object change color?", "how often does the color change?"),
    "order": ("which came first, the beeps or the noise?", "what did you hear first, beeps or noise?"),
}

# family -> (task, what it needs, answer set)
FAMILIES: dict[str, dict[str, Any]] = {
    "shape": {"task": "qa", "needs": "video", "answers": list(SHAPES)},
    "direction": {"task": "qa", "needs": "video over time", "answers": list(DIRECTIONS)},
    "pitch": {"task": "qa", "needs": "audio", "answers": list(PITCH_NAMES)},
    "beep_count": {"task": "qa", "needs": "audio over time (counting)",
                   "answers": [NUMBER_WORDS[n] for n in BEEP_COUNTS]},
    "sync_color": {"task": "qa", "needs": "audio-visual synchrony", "answers": list(COLOR_NAMES)},
    "start_color": {"task": "qa", "needs": "video, memory of the first chunk", "answers": list(COLOR_NAMES)},
    "end_color": {"task": "qa", "needs": "video, last chunk", "answers": list(COLOR_NAMES)},
    "color_changes": {"task": "qa", "needs": "video, counting across chunks",
                      "answers": [NUMBER_WORDS[n] for n in COLOR_CHANGES]},
    "order": {"task": "qa", "needs": "audio, temporal order", "answers": list(ORDERS)},
    "caption": {"task": "caption", "needs": "video + audio", "answers": None},
    "classify": {"task": "classify", "needs": "video + audio",
                 "answers": [f"{p} {s}" for p in PITCH_NAMES for s in SHAPES]},
}


def beep_train_seconds(n: int) -> float:
    """Duration of a train of n beeps."""
    return BEEP_PERIOD * (n - 1) + BEEP_ON


def _feasible_noise_seconds(n_beeps: int, first: str) -> list[int]:
    """Seconds k where the noise can play so that n beeps fit wholly before/after it."""
    dur = beep_train_seconds(n_beeps)
    out = []
    for k in range(SECONDS):
        if first == "beeps":
            lo, hi = 0.05, k + NOISE_START - GAP - dur
        else:
            lo, hi = k + NOISE_END + GAP, SECONDS - EDGE - dur
        if hi >= lo - 1e-9:
            out.append(k)
    return out


# ------------------------------------------------------------------------------------------------
# planning: the latent variables of every clip (cheap, in the main process)


def split_sizes(num: int) -> dict[str, int]:
    if num < len(SPLITS):
        raise UsageError(f"--num must be at least {len(SPLITS)} (one clip per split), got {num}")
    val = max(1, round(num * SPLITS[1][1]))
    test = max(1, round(num * SPLITS[2][1]))
    return {"train": num - val - test, "val": val, "test": test}


def _balanced(rng: np.random.Generator, n_values: int, n: int) -> np.ndarray:
    """n indices into n_values values, each value equally often (up to rounding), shuffled."""
    base = np.resize(np.arange(n_values), n)
    # Which values get the extra count when n is not a multiple: random, not always the first.
    order = rng.permutation(n_values)
    return rng.permutation(order[base])


def _balanced_pairs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(shape, pitch) indices for n clips: each marginal balanced (up to rounding) and each of
    the 9 pairs (the classify labels) equally often (up to rounding), shuffled."""
    assert len(SHAPES) == len(PITCH_NAMES) == 3
    i = np.arange(n)
    # Cycle of period 9 through all pairs, every aligned block of 3 a permutation of both.
    first, second = i % 3, (i // 3 + i) % 3
    first = rng.permutation(3)[first]
    second = rng.permutation(3)[second]
    order = rng.permutation(n)
    return first[order], second[order]


def plan(num: int, seed: int) -> list[dict[str, Any]]:
    """The latent description of every clip, in clip order (train clips first, then val, test)."""
    if seed < 0:
        raise UsageError(f"--seed must be >= 0, got {seed}")
    specs: list[dict[str, Any]] = []
    index = 0
    for split_no, (split, n) in enumerate(split_sizes(num).items()):
        rng = np.random.default_rng([seed, 7919, split_no])
        shape, pitch = _balanced_pairs(rng, n)
        direction = _balanced(rng, len(DIRECTIONS), n)
        n_beeps = _balanced(rng, len(BEEP_COUNTS), n)
        order = _balanced(rng, len(ORDERS), n)
        start_color = _balanced(rng, len(COLOR_NAMES), n)
        n_changes = _balanced(rng, len(COLOR_CHANGES), n)
        for j in range(n):
            crng = np.random.default_rng([seed, 104729, index])
            changes = COLOR_CHANGES[n_changes[j]]
            where = set(crng.choice(SECONDS - 1, size=changes, replace=False).tolist())
            colors = [int(start_color[j])]
            for b in range(1, SECONDS):
                if b - 1 in where:
                    others = [c for c in range(len(COLOR_NAMES)) if c != colors[-1]]
                    colors.append(int(others[crng.integers(len(others))]))
                else:
                    colors.append(colors[-1])
            beeps = BEEP_COUNTS[n_beeps[j]]
            first = ORDERS[order[j]]
            ks = _feasible_noise_seconds(beeps, first)
            k = int(ks[crng.integers(len(ks))])
            dur = beep_train_seconds(beeps)
            if first == "beeps":
                lo, hi = 0.05, k + NOISE_START - GAP - dur
            else:
                lo, hi = k + NOISE_END + GAP, SECONDS - EDGE - dur
            beep_start = float(lo + (hi - lo) * crng.random()) if hi > lo else float(lo)
            specs.append({
                "index": index,
                "clip": f"c{index:05d}",
                "split": split,
                "shape": SHAPES[shape[j]],
                "direction": DIRECTIONS[direction[j]],
                "colors": [COLOR_NAMES[c] for c in colors],
                "pitch": PITCH_NAMES[pitch[j]],
                "beeps": beeps,
                "beep_start": round(beep_start, 4),
                "noise_second": k,
                "first": first,
                # appearance details (not asked about)
                "size": round(float(crng.uniform(0.38, 0.46)), 4),
                "offset": round(float(crng.uniform(-0.08, 0.08)), 4),
                "background": int(crng.integers(0, 41)),
                "color_jitter": crng.integers(-15, 16, size=3).tolist(),
                "freq_jitter": round(float(crng.uniform(-0.03, 0.03)), 4),
                "seed": [seed, index],
            })
            index += 1
    return specs


def questions_for(spec: dict[str, Any], rng: np.random.Generator | None = None) -> list[dict[str, Any]]:
    """The manifest rows of one clip (video path relative to the output folder)."""
    rng = rng if rng is not None else np.random.default_rng([spec["seed"][0], 15485863, spec["index"]])
    colors = spec["colors"]
    changes = sum(a != b for a, b in zip(colors, colors[1:]))
    answers = {
        "shape": spec["shape"],
        "direction": spec["direction"],
        "pitch": spec["pitch"],
        "beep_count": NUMBER_WORDS[spec["beeps"]],
        "sync_color": colors[spec["noise_second"]],
        "start_color": colors[0],
        "end_color": colors[-1],
        "color_changes": NUMBER_WORDS[changes],
        "order": spec["first"],
    }
    video = f"clips/{spec['clip']}.mp4"
    rows = []
    for family, answer in answers.items():
        templates = QUESTIONS[family]
        row = {"id": f"{spec['clip']}-{family}", "video": video, "task": "qa",
               "question": templates[int(rng.integers(len(templates)))], "answer": answer}
        if family == "order":
            row["choices"] = list(ORDERS)
        row["type"] = family
        row["clip"] = spec["clip"]
        rows.append(row)
    caption = f"{colors[0]} {spec['shape']} moves {spec['direction']} with {spec['pitch']} beeps"
    rows.append({"id": f"{spec['clip']}-caption", "video": video, "task": "caption", "answer": caption,
                 "type": "caption", "clip": spec["clip"]})
    rows.append({"id": f"{spec['clip']}-classify", "video": video, "task": "classify",
                 "answer": f"{spec['pitch']} {spec['shape']}", "type": "classify", "clip": spec["clip"]})
    return rows


# ------------------------------------------------------------------------------------------------
# rendering (numpy, vectorised over frames and samples)

_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5  # pixel centres


def render_frames(spec: dict[str, Any]) -> np.ndarray:
    """[SECONDS*FPS, SIZE, SIZE, 3] uint8 frames of one clip."""
    n = SECONDS * FPS
    t = np.arange(n, dtype=np.float32) / FPS
    s = spec["size"] * SIZE
    lo, hi = s / 2 + 2.0, SIZE - s / 2 - 2.0
    progress = (t + 0.5 / FPS) / SECONDS  # 1/16 .. 31/32 of the way
    along = lo + (hi - lo) * progress
    across = np.full(n, SIZE / 2 + spec["offset"] * SIZE, dtype=np.float32)
    direction = spec["direction"]
    if direction == "right":
        cx, cy = along, across
    elif direction == "left":
        cx, cy = SIZE - along, across
    elif direction == "down":
        cx, cy = across, along
    else:  # up
        cx, cy = across, SIZE - along
    dx = _XX[None] - cx[:, None, None]
    dy = _YY[None] - cy[:, None, None]
    half = s / 2
    shape = spec["shape"]
    if shape == "square":
        mask = (np.abs(dx) <= half) & (np.abs(dy) <= half)
    elif shape == "circle":
        mask = dx * dx + dy * dy <= half * half
    else:  # triangle pointing up: apex at the top, base at the bottom
        mask = (np.abs(dy) <= half) & (np.abs(dx) <= (dy + half) / 2)
    jitter = np.asarray(spec["color_jitter"], dtype=np.int32)
    palette = np.stack([np.clip(np.asarray(COLORS[c]) + jitter, 0, 255) for c in spec["colors"]])
    second = np.minimum((np.arange(n) // FPS), SECONDS - 1)
    color = palette[second].astype(np.uint8)  # [n, 3]
    background = np.full(3, spec["background"], dtype=np.uint8)
    return np.where(mask[..., None], color[:, None, None, :], background).astype(np.uint8)


def _ramp(length: int, fade: int) -> np.ndarray:
    env = np.ones(length, dtype=np.float32)
    fade = min(fade, length // 2)
    if fade > 0:
        r = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade, dtype=np.float32) / fade)
        env[:fade] = r
        env[length - fade:] = r[::-1]
    return env


def render_audio(spec: dict[str, Any]) -> np.ndarray:
    """[SECONDS*SAMPLE_RATE] float32 mono audio of one clip."""
    sr = SAMPLE_RATE
    audio = np.zeros(SECONDS * sr, dtype=np.float32)
    rng = np.random.default_rng([spec["seed"][0], 32452843, spec["index"]])
    freq = PITCHES[spec["pitch"]] * (1.0 + spec["freq_jitter"])
    on = int(round(BEEP_ON * sr))
    env = _ramp(on, int(0.01 * sr))
    tone = (BEEP_AMP * np.sin(2 * np.pi * freq * np.arange(on) / sr)).astype(np.float32) * env
    for b in range(spec["beeps"]):
        i = int(round((spec["beep_start"] + b * BEEP_PERIOD) * sr))
        audio[i:i + on] += tone[: len(audio) - i]
    k = spec["noise_second"]
    a, b = int(round((k + NOISE_START) * sr)), int(round((k + NOISE_END) * sr))
    noise = np.clip(rng.standard_normal(b - a).astype(np.float32) * NOISE_STD, -0.9, 0.9)
    audio[a:b] += noise * _ramp(b - a, int(0.02 * sr))
    return audio


# ------------------------------------------------------------------------------------------------
# writing


def render_clip(spec: dict[str, Any], path: str | os.PathLike) -> str:
    """Render one clip's frames and audio and write them to `path` (mp4)."""
    write_video(path, render_frames(spec), FPS, render_audio(spec), SAMPLE_RATE)
    return str(path)


def _render_task(task: tuple[dict[str, Any], str]) -> str:
    return render_clip(*task)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def clips_folder(out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """The output folder and its clips/ folder, created; an --out that is a file is a UsageError."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder for the clips and manifests")
    clips_dir = out / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    return out, clips_dir

def render_all(render, tasks: list, workers: int | None, progress: bool, desc: str, chunksize: int = 8,
               min_parallel: int = 8) -> None:
    """Run `render` on every task, in `workers` processes (default: min(2, CPU count)) when there
    are at least `min_parallel` tasks, with a progress bar."""
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(tasks), desc=desc, unit="clip")
        except ImportError:  # pragma: no cover
            bar = None
    if workers > 1 and len(tasks) >= min_parallel:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(render, tasks, chunksize=chunksize):
                if bar is not None:
                    bar.update(1)
    else:
        for task in tasks:
            render(task)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()


def write_splits(out: Path, specs: list[dict[str, Any]], num: int, questions) -> tuple[dict, dict, dict, dict]:
    """train/val/test.jsonl from the clips' specs (`questions(spec)` -> rows) -> (manifests, clips,
    rows, rows by type), each by split."""
    manifests, clips, rows_count, by_type = {}, {}, {}, {}
    for split in split_sizes(num):
        rows = [row for spec in specs if spec["split"] == split for row in questions(spec)]
        path = out / f"{split}.jsonl"
        _write_jsonl(path, rows)
        manifests[split] = str(path)
        clips[split] = sum(spec["split"] == split for spec in specs)
        rows_count[split] = len(rows)
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["type"]] = counts.get(row["type"], 0) + 1
        by_type[split] = counts
    return manifests, clips, rows_count, by_type


def synthesize(out_dir: str | os.PathLike, num: int | None = None, seed: int = 0, workers: int | None = None,
               progress: bool = True) -> dict[str, Any]:
    """Write the built-in dataset to `out_dir`: clips/*.mp4, train/val/test.jsonl, world.json.

    Returns {"out", "manifests": {split: path}, "clips": {split: n}, "rows": {split: n},
    "by_type": {split: {type: n}}, "num", "seed", "seconds", "clips_per_second"}.
    `workers`: rendering processes (default: min(2, CPU count)); the result does not depend on it.
    """
    num = DEFAULT_NUM if num is None else int(num)
    out, clips_dir = clips_folder(out_dir)
    started = time.perf_counter()
    specs = plan(num, seed)
    tasks = [(spec, str(clips_dir / f"{spec['clip']}.mp4")) for spec in specs]
    wanted = {Path(path).name for _, path in tasks}
    for stale in clips_dir.glob("c[0-9][0-9][0-9][0-9][0-9].mp4"):  # from an earlier, larger run
        if stale.name not in wanted:
            stale.unlink()

    render_all(_render_task, tasks, workers, progress, "synth", chunksize=8)
    manifests, clips, rows_count, by_type = write_splits(out, specs, num, questions_for)
    seconds = time.perf_counter() - started
    world = {
        "generator": "mirasol.corpora.synth",
        "version": 1,
        "num": num,
        "seed": seed,
        "seconds": SECONDS,
        "fps": FPS,
        "size": SIZE,
        "sample_rate": SAMPLE_RATE,
        "clips": clips,
        "rows": rows_count,
        "families": FAMILIES,
    }
    (out / "world.json").write_text(json.dumps(world, indent=2) + "\n", encoding="utf-8")
    return {
        "out": str(out),
        "manifests": manifests,
        "clips": clips,
        "rows": rows_count,
        "by_type": by_type,
        "num": num,
        "seed": seed,
        "seconds": seconds,
        "clips_per_second": num / seconds if seconds > 0 else math.inf,
    }
