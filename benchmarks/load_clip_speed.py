"""How long does load_clip take on a 10-second 480p clip with audio, per preset?

    python benchmarks/load_clip_speed.py [--repeats 7] [--keep DIR]

Writes a 10 s 854x480 30 fps H.264 + AAC (44.1 kHz stereo) file with mirasol.media.writer,
then times load_clip (median of the repeats, after one warm-up) for the 'tiny' and 'small' presets,
with the clip taken from the start and from the centre (which seeks).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from mirasol import MirasolConfig
from mirasol.media import load_clip
from mirasol.media.writer import write_video


def write_clip(path: Path, seconds: float = 10.0, fps: int = 30, size=(480, 854), sample_rate: int = 44100) -> None:
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]

    def frames():  # moving gradients and a sliding box: some motion for the encoder to code
        for k in range(int(seconds * fps)):
            image = np.empty((h, w, 3), np.uint8)
            image[..., 0] = (xx + 4 * k) % 256
            image[..., 1] = (yy + 2 * k) % 256
            image[..., 2] = ((xx + yy) // 4 + k) % 256
            x0 = (10 * k) % (w - 80)
            image[100:180, x0:x0 + 80] = 255
            yield image

    t = np.arange(int(seconds * sample_rate)) / sample_rate
    audio = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 660 * t)]).astype(np.float32)
    write_video(path, frames(), fps, audio, sample_rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--keep", type=Path, help="write the test clip here instead of a temporary folder")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp())
    path = folder / "bench_480p_10s.mp4"
    if not path.exists():
        write_clip(path)
    print(f"file: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    for preset in ("tiny", "small"):
        for window in ("start", "center"):
            cfg = MirasolConfig.preset(preset, clip_window=window)
            load_clip(path, cfg)  # warm-up
            times = []
            for _ in range(args.repeats):
                began = time.perf_counter()
                load_clip(path, cfg)
                times.append(time.perf_counter() - began)
            print(f"{preset:>5} clip_window={window:<6} ({cfg.clip_seconds:g} s clip, {cfg.num_frames} frames "
                  f"{cfg.image_size}px, {cfg.n_mels} mels): median {1000 * statistics.median(times):.0f} ms, "
                  f"min {1000 * min(times):.0f} ms")


if __name__ == "__main__":
    main()
