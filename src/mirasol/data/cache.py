"""The clip cache: decode every clip once, train many times without decoding.

Layout of a cache folder (one per media setting and store format; `media.json` records both):

    media.json      the media settings the clips were decoded with (fps, size, mels, ...), and
                    "store" unless it is raw (caches made before the formats existed are raw)
    video.u8        raw uint8 rows of [F, 3, S, S]      } memory-mapped by the loader;
    audio.f16       raw float16 rows of [n_mels, A]     } row i of both is one clip
    index.jsonl     one line per cached row: {"key", "row", "has_audio", "valid_seconds", ...}
    failed.jsonl    clips that could not be used: {"key", "id", "video", "reason"}
    report.json     ok / skipped / no_audio summary of the last `prepare`

Store formats (`data.store`, `mirasol prepare --store`):

    raw     as above
    h264    video.bin instead of video.u8: each clip's frames re-encoded (mirasol.data.codecs),
            appended; index entries add "offset", "size" and "crc32" of the row's bytes.
            Audio rows stay raw float16 (they are under 5 % of a raw row at every preset).
    jpeg    like h264, one JPEG per frame
    none    no frames kept: `prepare` still decodes each clip once to check it (index, failed and
            report as for the other formats, entries add "video", "start", "end") and the
            loader decodes the clip again, in its worker, each time it is read
    auto    h264 when a raw video row would exceed AUTO_RAW_LIMIT bytes, else raw

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
import signal
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from mirasol.config import STORES, MirasolConfig
from mirasol.data import codecs
from mirasol.errors import MirasolError

MEDIA_KEYS = ("num_chunks", "frames_per_chunk", "fps", "image_size", "sample_rate", "n_mels",
              "audio_win_ms", "audio_hop_ms", "resize", "clip_window", "missing_audio")


def clip_key(video: str, start: float | None, end: float | None) -> str:
    return f"{os.path.abspath(video)}|{'' if start is None else f'{start:g}'}|{'' if end is None else f'{end:g}'}"


# auto: raw up to 1 MiB of video per clip (tiny 24 KB, small 384 KB: reading is a copy, and 10k clips
# take under 10 GB), h264 above (base 9.2 MiB, mirasol3b 18.4 MiB). benchmarks/store-encoding.md.
AUTO_RAW_LIMIT = 1 << 20


def resolve_store(store: str, cfg: MirasolConfig) -> str:
    """auto -> the concrete format for cfg's frame size; other values are checked and returned."""
    if store not in STORES:
        raise CacheError(f"unknown store format {store!r} (choose from {', '.join(STORES)})")
    if store != "auto":
        return store
    return "raw" if cfg.num_frames * 3 * cfg.image_size ** 2 <= AUTO_RAW_LIMIT else "h264"


def media_settings(cfg: MirasolConfig, store: str = "raw") -> dict:
    """What a cache folder is keyed by. The store format is only recorded when it is not raw, so
    that raw caches made before the formats existed keep their folder and stay valid."""
    settings = {k: getattr(cfg, k) for k in MEDIA_KEYS}
    if cfg.audio_features != "log_mel":  # likewise only when set (a Whisper audio backbone)
        settings["audio_features"] = cfg.audio_features
    store = resolve_store(store, cfg)
    return settings if store == "raw" else {**settings, "store": store}


def default_cache_dir(manifest: str | os.PathLike, cfg: MirasolConfig, store: str = "auto") -> Path:
    """<manifest folder>/.mirasol_cache/<hash of the media settings and store format>."""
    import hashlib

    digest = hashlib.sha1(json.dumps(media_settings(cfg, store), sort_keys=True).encode()).hexdigest()[:10]
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


def decode_clip(video: str | bytes, cfg: MirasolConfig, start: float | None, end: float | None,
                name: str | None = None):
    """load_clip -> (video uint8 [F, 3, S, S], audio float16 [n_mels, A], info): what a raw row holds.
    `video`: a path, or a file's bytes (a shard's sample, `name` naming it)."""
    from mirasol.media.clip import load_clip

    clip = load_clip(video, cfg, start=start, end=end, name=name)
    frames = (clip.video.clamp(0, 1) * 255).round().byte().numpy()
    audio = clip.audio.numpy().astype(np.float16)
    info = {"has_audio": bool(clip.has_audio), "valid_seconds": float(clip.valid_seconds),
            "valid_chunks": int(clip.valid_chunks)}
    return frames, audio, info


def _decode(args: tuple) -> tuple[ClipRequest, dict | None, bytes | None, bytes | None]:
    """Worker: decode one clip and encode it for the store. Returns (request, info, video bytes,
    audio bytes) or an error info; store "none" returns empty bytes (the clip was only checked)."""
    request, cfg_dict, store = args
    from mirasol.media.decode import MediaError

    cfg = MirasolConfig.from_dict(cfg_dict)
    try:
        video, audio, info = decode_clip(request.video, cfg, request.start, request.end)
    except MediaError as err:
        return request, {"error": str(err)}, None, None
    except Exception as err:  # a decoder bug must not lose the rest of the run: record and go on
        return request, {"error": f"{request.video}: unexpected {type(err).__name__}: {err}"}, None, None
    if store == "none":
        return request, {**info, "video": request.video, "start": request.start, "end": request.end}, b"", b""
    return request, info, codecs.encode(video, store, cfg.frames_per_chunk), audio.tobytes()


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    # Ctrl-C reaches every process of the terminal's group: the parent stops the pool and prints
    # one line (`mirasol.cli.main`); a worker must not print a traceback of its own
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _read_entries(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    entries = (json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return {entry["key"]: entry for entry in entries}


class ClipCache:
    """Reader (and appender) of one cache folder. `store`: the format wanted; None or auto open an
    existing folder in whatever format it was made with (auto picks by frame size for a new one)."""

    def __init__(self, root: str | os.PathLike, cfg: MirasolConfig, create: bool = False, store: str | None = None):
        self.root = Path(root)
        self.cfg = cfg
        self.video_shape = (cfg.num_frames, 3, cfg.image_size, cfg.image_size)
        self.audio_shape = (cfg.n_mels, cfg.audio_frames)
        media_file = self.root / "media.json"
        if media_file.exists():
            found = json.loads(media_file.read_text())
            found_store = found.get("store", "raw")
            settings = media_settings(cfg, found_store if store in (None, "auto") else store)
            if found != settings:
                diff = {k: (found.get(k, "raw" if k == "store" else None),
                            settings.get(k, "raw" if k == "store" else None))
                        for k in {*settings, *found} if found.get(k) != settings.get(k)}
                raise CacheError(f"{self.root} was prepared with other media settings {diff} (cached, wanted); "
                                 "use another cache folder")
        elif create:
            settings = media_settings(cfg, store or "auto")
            self.root.mkdir(parents=True, exist_ok=True)
            media_file.write_text(json.dumps(settings, indent=2))
        else:
            raise CacheError(f"{self.root} is not a clip cache (no media.json); run `mirasol prepare` first")
        self.store = settings.get("store", "raw")
        self.video_file = self.root / ("video.u8" if self.store == "raw" else "video.bin")
        self.index = _read_entries(self.root / "index.jsonl")  # key -> {"row", "has_audio", ...}
        self.failed = _read_entries(self.root / "failed.jsonl")  # key -> {"id", "video", "reason"}
        self._video = self._audio = None

    @property
    def video_row_bytes(self) -> int:
        return int(np.prod(self.video_shape))

    @property
    def audio_row_bytes(self) -> int:
        return int(np.prod(self.audio_shape)) * 2

    def _video_bytes(self) -> int:
        """Bytes of video.* that index.jsonl accounts for."""
        if self.store == "raw":
            return len(self.index) * self.video_row_bytes
        return max((e["offset"] + e["size"] for e in self.index.values()), default=0)

    def _truncate_to_index(self) -> None:
        """Drop bytes of rows that were written but never recorded (a run killed mid-write)."""
        if self.store == "none":
            return
        for path, size in ((self.video_file, self._video_bytes()),
                           (self.root / "audio.f16", len(self.index) * self.audio_row_bytes)):
            if path.exists() and path.stat().st_size != size:
                with open(path, "r+b") as f:
                    f.truncate(size)

    def _arrays(self):
        if self._video is None or self._audio.shape[0] < len(self.index):
            rows = len(self.index)
            if rows == 0:
                raise CacheError(f"{self.root} holds no clips")
            for path, size, need in ((self.video_file, self.video_row_bytes, self._video_bytes()),
                                     (self.root / "audio.f16", self.audio_row_bytes, rows * self.audio_row_bytes)):
                have = path.stat().st_size if path.exists() else 0
                if have < need:  # files cut short or deleted after they were indexed
                    held = f"{have // size} clips" if path.suffix != ".bin" else f"{have} of the {need} bytes"
                    raise CacheError(f"{path} holds {held} but index.jsonl lists {rows}: the cache "
                                     f"is damaged; delete {self.root} and run `mirasol prepare` (or train) again")
            if self.store == "raw":
                self._video = np.memmap(self.video_file, dtype=np.uint8, mode="r", shape=(rows, *self.video_shape))
            else:
                self._video = np.memmap(self.video_file, dtype=np.uint8, mode="r", shape=(self._video_bytes(),))
            self._audio = np.memmap(self.root / "audio.f16", dtype=np.float16, mode="r", shape=(rows, *self.audio_shape))
        return self._video, self._audio

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def get(self, key: str) -> tuple[np.ndarray, np.ndarray, dict]:
        """(video uint8 [F, 3, S, S], audio float16 [n_mels, A], info) of a cached clip."""
        entry = self.index[key]
        if self.store == "none":  # decoded here, in the loader worker, exactly as `prepare` checked it
            from mirasol.media.decode import MediaError

            try:
                video, audio, _ = decode_clip(entry["video"], self.cfg, entry["start"], entry["end"])
            except MediaError as err:
                raise CacheError(f"{self.root}: clip {key!r} decoded in `prepare` but not now: {err}") from None
            return video, audio, entry
        video, audio = self._arrays()
        if self.store == "raw":
            return video[entry["row"]], audio[entry["row"]], entry
        data = video[entry["offset"]:entry["offset"] + entry["size"]]
        if len(data) != entry["size"] or zlib.crc32(data) != entry["crc32"]:
            raise CacheError(f"{self.root}: the {self.store} row of clip {key!r} is corrupt (its bytes do not match "
                             "the checksum in index.jsonl); delete the cache folder and run `mirasol prepare` again")
        try:
            frames = codecs.decode(data, self.store, self.video_shape)
        except codecs.CodecError as err:
            raise CacheError(f"{self.root}: the {self.store} row of clip {key!r} does not decode ({err}); "
                             "delete the cache folder and run `mirasol prepare` again") from None
        return frames, audio[entry["row"]], entry

    def add(self, requests: Sequence[ClipRequest], workers: int | None = None, progress: bool = True) -> None:
        """Decode the requests not yet cached (nor known to fail), in parallel, appending as they finish."""
        todo = [r for r in requests if r.key not in self.index and r.key not in self.failed]
        if not todo:
            return
        self._truncate_to_index()
        workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
        cfg_dict = self.cfg.to_dict()
        jobs = [(r, cfg_dict, self.store) for r in todo]
        offset = self._video_bytes()
        keep = self.store != "none"  # none: the clip is checked, nothing is written but its entry
        with open(self.video_file if keep else os.devnull, "ab") as fv, \
                open(self.root / "audio.f16" if keep else os.devnull, "ab") as fa, \
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
                    if self.store in ("h264", "jpeg"):
                        entry.update(offset=offset, size=len(video), crc32=zlib.crc32(video))
                        offset += len(video)
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
            workers: int | None = None, progress: bool = True, store: str = "auto",
            samples: list | None = None) -> dict:
    """Cache every clip the manifests refer to (in the `store` format); write and return the report.
    `samples`: the manifests' rows when the caller has read them already (not read again)."""
    from mirasol.data.manifest import read_manifest

    if samples is None:
        samples = [s for m in manifests for s in read_manifest(m)]
    cache = ClipCache(out, cfg, create=True, store=store)
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
    tmp = Path(out) / f"report.json.{os.getpid()}.tmp"  # two processes may ready one store at once
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
