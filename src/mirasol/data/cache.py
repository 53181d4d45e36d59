"""The clip cache: decode every clip once, train many times without decoding.

Layout of a cache folder (one per media setting; `media.json` records it):

    media.json      the media settings the clips were decoded with (fps, size, mels, ...)
    video.u8        raw uint8 rows of [F, 3, S, S]      } memory-mapped by the loader;
    audio.f16       raw float16 rows of [n_mels, A]     } row i of both is one clip
    index.jsonl     one line per cached row: {"key", "row", "has_audio", "valid_seconds", ...}
    failed.jsonl    clips that could not be used: {"key", "id", "video", "reason"}
    report.json     ok / skipped / no_audio summary of the last `prepare`

Why flat memory-mapped arrays: rows are fixed-size, so reading sample i is one slice of the page
cache with no decoding, no unpickling and no per-file open; appending is cheap, and a run killed
halfway is resumed by trusting only rows listed in index.jsonl (files are cut back to that).

A clip's key is its resolved video path plus its [start, end] window, so several manifest rows
asking about the same clip share one cached row.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from mirasol.config import MirasolConfig
from mirasol.errors import MirasolError

MEDIA_KEYS = ("num_chunks", "frames_per_chunk", "fps", "image_size", "sample_rate", "n_mels",
              "audio_win_ms", "audio_hop_ms", "resize", "clip_window", "missing_audio")


def clip_key(video: str, start: float | None, end: float | None) -> str:
    return f"{os.path.abspath(video)}|{'' if start is None else f'{start:g}'}|{'' if end is None else f'{end:g}'}"


def media_settings(cfg: MirasolConfig) -> dict:
    return {k: getattr(cfg, k) for k in MEDIA_KEYS}


def default_cache_dir(manifest: str | os.PathLike, cfg: MirasolConfig) -> Path:
    """<manifest folder>/.mirasol_cache/<hash of the media settings>: one cache per media setting."""
    import hashlib

    digest = hashlib.sha1(json.dumps(media_settings(cfg), sort_keys=True).encode()).hexdigest()[:10]
    return Path(manifest).resolve().parent / ".mirasol_cache" / digest


class CacheError(MirasolError, RuntimeError):
    """A cache folder cannot be used (other media settings, not a cache, damaged)."""


@dataclass
class ClipRequest:
    key: str
    id: str  # first manifest id that asked for it (for reports)
    video: str
    start: float | None
    end: float | None


def _decode(args: tuple[ClipRequest, dict]) -> tuple[ClipRequest, dict | None, bytes | None, bytes | None]:
    """Worker: decode one clip. Returns (request, info, video bytes, audio bytes) or an error info."""
    request, cfg_dict = args
    from mirasol.media.clip import load_clip
    from mirasol.media.decode import MediaError

    cfg = MirasolConfig.from_dict(cfg_dict)
    try:
        clip = load_clip(request.video, cfg, start=request.start, end=request.end)
    except MediaError as err:
        return request, {"error": str(err)}, None, None
    except Exception as err:  # a decoder bug must not lose the rest of the run: record and go on
        return request, {"error": f"{request.video}: unexpected {type(err).__name__}: {err}"}, None, None
    video = (clip.video.clamp(0, 1) * 255).round().byte().numpy()
    audio = clip.audio.numpy().astype(np.float16)
    info = {"has_audio": bool(clip.has_audio), "valid_seconds": float(clip.valid_seconds),
            "valid_chunks": int(clip.valid_chunks)}
    return request, info, video.tobytes(), audio.tobytes()


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _read_entries(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    entries = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {entry["key"]: entry for entry in entries}


class ClipCache:
    """Reader (and appender) of one cache folder."""

    def __init__(self, root: str | os.PathLike, cfg: MirasolConfig, create: bool = False):
        self.root = Path(root)
        self.cfg = cfg
        self.video_shape = (cfg.num_frames, 3, cfg.image_size, cfg.image_size)
        self.audio_shape = (cfg.n_mels, cfg.audio_frames)
        settings = media_settings(cfg)
        media_file = self.root / "media.json"
        if media_file.exists():
            found = json.loads(media_file.read_text())
            if found != settings:
                diff = {k: (found.get(k), v) for k, v in settings.items() if found.get(k) != v}
                raise CacheError(f"{self.root} was prepared with other media settings {diff} (cached, wanted); "
                                 "use another cache folder")
        elif create:
            self.root.mkdir(parents=True, exist_ok=True)
            media_file.write_text(json.dumps(settings, indent=2))
        else:
            raise CacheError(f"{self.root} is not a clip cache (no media.json); run `mirasol prepare` first")
        self.index = _read_entries(self.root / "index.jsonl")  # key -> {"row", "has_audio", ...}
        self.failed = _read_entries(self.root / "failed.jsonl")  # key -> {"id", "video", "reason"}
        self._video = self._audio = None

    @property
    def video_row_bytes(self) -> int:
        return int(np.prod(self.video_shape))

    @property
    def audio_row_bytes(self) -> int:
        return int(np.prod(self.audio_shape)) * 2

    def _truncate_to_index(self) -> None:
        """Drop bytes of rows that were written but never recorded (a run killed mid-write)."""
        rows = len(self.index)
        for name, size in (("video.u8", self.video_row_bytes), ("audio.f16", self.audio_row_bytes)):
            path = self.root / name
            if path.exists() and path.stat().st_size != rows * size:
                with open(path, "r+b") as f:
                    f.truncate(rows * size)

    def _arrays(self):
        if self._video is None or self._video.shape[0] < len(self.index):
            rows = len(self.index)
            if rows == 0:
                raise CacheError(f"{self.root} holds no clips")
            for name, size in (("video.u8", self.video_row_bytes), ("audio.f16", self.audio_row_bytes)):
                path = self.root / name
                have = path.stat().st_size if path.exists() else 0
                if have < rows * size:  # files cut short or deleted after they were indexed
                    raise CacheError(f"{path} holds {have // size} clips but index.jsonl lists {rows}: the cache "
                                     f"is damaged; delete {self.root} and run `mirasol prepare` (or train) again")
            self._video = np.memmap(self.root / "video.u8", dtype=np.uint8, mode="r", shape=(rows, *self.video_shape))
            self._audio = np.memmap(self.root / "audio.f16", dtype=np.float16, mode="r", shape=(rows, *self.audio_shape))
        return self._video, self._audio

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def get(self, key: str) -> tuple[np.ndarray, np.ndarray, dict]:
        """(video uint8 [F, 3, S, S], audio float16 [n_mels, A], info) of a cached clip."""
        entry = self.index[key]
        video, audio = self._arrays()
        return video[entry["row"]], audio[entry["row"]], entry

    def add(self, requests: Sequence[ClipRequest], workers: int | None = None, progress: bool = True) -> None:
        """Decode the requests not yet cached (nor known to fail), in parallel, appending as they finish."""
        todo = [r for r in requests if r.key not in self.index and r.key not in self.failed]
        if not todo:
            return
        self._truncate_to_index()
        workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
        cfg_dict = self.cfg.to_dict()
        jobs = [(r, cfg_dict) for r in todo]
        with open(self.root / "video.u8", "ab") as fv, open(self.root / "audio.f16", "ab") as fa, \
                open(self.root / "index.jsonl", "a") as fi, open(self.root / "failed.jsonl", "a") as ff:
            if workers == 1:
                results = map(_decode, jobs)
                pool = None
            else:
                pool = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn").Pool(
                    workers, initializer=_init_worker)
                results = pool.imap_unordered(_decode, jobs, chunksize=4)
            try:
                for request, info, video, audio in tqdm(results, total=len(jobs), desc="decoding clips",
                                                        unit="clip", disable=not progress, file=sys.stderr):
                    if video is None:
                        entry = {"key": request.key, "id": request.id, "video": request.video, "reason": info["error"]}
                        ff.write(json.dumps(entry) + "\n")
                        ff.flush()
                        self.failed[request.key] = entry
                        continue
                    fv.write(video)
                    fa.write(audio)
                    fv.flush()
                    fa.flush()
                    entry = {"key": request.key, "row": len(self.index), "id": request.id, **info}
                    fi.write(json.dumps(entry) + "\n")  # written last: a row counts once it is listed
                    fi.flush()
                    self.index[request.key] = entry
            finally:
                if pool is not None:
                    pool.terminate()
        self._video = self._audio = None


def requests_for(samples: Iterable) -> list[ClipRequest]:
    """One request per distinct clip (video + window) of the samples, in manifest order."""
    seen: dict[str, ClipRequest] = {}
    for s in samples:
        key = clip_key(s.video, s.start, s.end)
        if key not in seen:
            seen[key] = ClipRequest(key, s.id, s.video, s.start, s.end)
    return list(seen.values())


def prepare(manifests: Sequence[str | os.PathLike], out: str | os.PathLike, cfg: MirasolConfig,
            workers: int | None = None, progress: bool = True) -> dict:
    """Cache every clip the manifests refer to; write and return the report."""
    from mirasol.datasets.manifest import read_manifest

    samples = [s for m in manifests for s in read_manifest(m)]
    cache = ClipCache(out, cfg, create=True)
    requests = requests_for(samples)
    cache.add(requests, workers=workers, progress=progress)
    ok = [r for r in requests if r.key in cache.index]
    report = {
        "ok": len(ok),
        "skipped": [{"id": r.id, "video": r.video, "reason": cache.failed[r.key]["reason"]}
                    for r in requests if r.key in cache.failed],
        "no_audio": [cache.index[r.key]["id"] for r in ok if not cache.index[r.key]["has_audio"]],
        "samples": len(samples),
        "samples_usable": sum(clip_key(s.video, s.start, s.end) in cache.index for s in samples),
    }
    tmp = Path(out) / "report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    tmp.replace(Path(out) / "report.json")
    return report


def print_report(report: dict, out: str | os.PathLike, file=None) -> None:
    file = file or sys.stderr  # looked up at call time, so redirected stderr is honoured
    print(f"cached {report['ok']} clips in {out} ({report['samples_usable']}/{report['samples']} manifest rows "
          f"usable); {len(report['skipped'])} skipped, {len(report['no_audio'])} without audio (silent)", file=file)
    for item in report["skipped"][:10]:
        print(f"  skipped {item['id']}: {item['reason']}", file=file)
    if len(report["skipped"]) > 10:
        print(f"  ... and {len(report['skipped']) - 10} more (see {Path(out) / 'report.json'})", file=file)


def require_clips(report: dict, manifest: str | os.PathLike, out: str | os.PathLike) -> None:
    """Raise CacheError when none of the manifest's clips could be decoded (a report of prepare)."""
    if report["ok"] == 0:
        first = f" (first: {report['skipped'][0]['reason']})" if report["skipped"] else ""
        raise CacheError(f"no clip of {manifest} could be decoded{first}; see {Path(out) / 'report.json'}")


def cli_prepare(args) -> int:
    from mirasol.train.config import load_model_config

    cfg = load_model_config(args.config)
    report = prepare(args.manifest, args.out, cfg, workers=args.workers)
    print_report(report, args.out)
    require_clips(report, ", ".join(args.manifest), args.out)  # some clips skipped is fine, none usable is not
    return 0
