"""Sharded datasets: WebDataset tar shards, as video2dataset writes them, read and written here.

A shard is a tar file; a sample is the files of one key, next to each other:

    000000017.mp4    the video (or .webm, .mkv, .mov, .avi, ...), the file's bytes unchanged
    000000017.json   one manifest row without `video` ({"task", "question", "answer", "type",
                     "start", "end", ...}), or a list of them: several questions about one clip
    000000017.txt    a caption; used when the json has no answer (video2dataset's captions)

Where a manifest is accepted (`--train`, `--val`, `--manifest`), a source ending in `.tar` is read
as shards: a path or URL, a brace pattern (`train-{00000..00099}.tar`), or several joined by `::`.
The `webdataset` library expands the patterns, opens the URLs (local files, `http(s)://`, `gs://`,
`hf://`, `pipe:COMMAND`, e.g. `pipe:aws s3 cp s3://bucket/x.tar -`) and reads the tar stream;
videos are decoded from their bytes by `load_clip`, exactly as from a file.

Training streams them (`ShardLoader`). Its order, and how it splits the work, is ours, because it
must survive a kill -9 on another number of processes; webdataset's node/worker splitters and
shuffle buffers keep no position. There are L *lanes* (`data.shard_lanes`; default: processes x
max(1, data.workers) at the start of the run). In epoch e, lane l reads the shards at positions
l, l + L, l + 2L, ... of the shard list permuted by (seed, e), each shard's samples through a
shuffle buffer (`data.shard_shuffle` samples) seeded by (seed, e, shard), and each global batch of
B rows takes the next B / L rows of every lane, lane 0 first. So the batches are a function of the
seed, L and B only, not of the number of processes or workers: rank r of W owns lanes
[r L/W, (r+1) L/W) (its contiguous share of the batch), and loader worker w of n owns every n-th
of those, so ranks and workers read disjoint shards. A lane's position (epoch, shard, sample, row)
is saved with every checkpoint; a resumed run, on any W dividing L, starts each lane there
(replaying the shard's shuffled order up to it, without decoding) and gives the very next rows.
Each lane counts its own epochs (shards differ in length).

Bad samples (no video file, an unreadable json, no text, a video that does not decode) are skipped
and counted per shard, never fatal. `write_shards` writes a manifest's clips into shards, with
their text index (the rows without videos, JSON Lines: what a run's first start reads for its
tokenizer and statistics, `data.shard_text`, instead of every shard); `unpack` writes shards back
out as files + manifest (evaluation and validation use it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from mirasol.choices import VIDEO_EXTENSIONS as VIDEO_EXTS
from mirasol.config import ConfigError, MirasolConfig
from mirasol.data.manifest import ManifestError, Sample, manifest_objects, parse_row, prompt_text, write_manifest
from mirasol.errors import MirasolError

ANSWER_KEYS = ("answer", "caption", "label")


class ShardError(MirasolError, ValueError):
    """A shard source cannot be used at all (missing file, no samples, too few shards)."""


class BadSample(Exception):
    """One sample of a shard cannot be used; skipped and counted."""


def is_shards(source) -> bool:
    """A `--train` / `--val` / `--manifest` value naming shards rather than a manifest."""
    return str(source).endswith(".tar")


def _remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def shard_urls(source: str) -> list[str]:
    """The shards of a source: `::`-joined parts, each brace-expanded (webdataset.expand_urls);
    local ones must exist."""
    from webdataset.shardlists import expand_urls

    urls = [u if _remote(u) else os.path.expanduser(u) for u in expand_urls(str(source))]
    missing = [u for u in urls if not _remote(u) and not os.path.isfile(u)]
    if missing:
        raise ShardError(f"shard {missing[0]} does not exist" + (f" (and {len(missing) - 1} more of {source})"
                                                                 if len(missing) > 1 else ""))
    if not urls:
        raise ShardError(f"{source}: names no shard")
    return urls


# --- reading ------------------------------------------------------------------------------------
@dataclasses.dataclass
class ShardSample:
    url: str
    key: str
    ext: str  # the video's container extension
    media: bytes
    rows: list[Sample]  # at least one


def raw_samples(url: str) -> Iterator[dict]:
    """The samples of one shard as webdataset groups them ({"__key__", "mp4": bytes, "json": bytes,
    ...}). A shard that ends in damaged data ends there (ShardError)."""
    from webdataset.gopen import gopen
    from webdataset.tariterators import group_by_keys, tar_file_expander

    stream = gopen(url, "rb")
    try:
        files = tar_file_expander([{"url": url, "stream": stream}])
        yield from group_by_keys(files)
    except (tarfile.TarError, OSError, ValueError) as err:
        raise ShardError(f"shard {url}: unreadable tar data ({err})") from None
    finally:
        stream.close()


def parse_sample(raw: dict) -> ShardSample:
    """A raw sample's video bytes and its rows; BadSample says why it cannot be used."""
    url, key = raw.get("__url__", "?"), raw["__key__"]
    ext = next((e for e in VIDEO_EXTS if raw.get(e)), None)
    if ext is None:
        raise BadSample("no video file" + ("" if not any(e in raw for e in VIDEO_EXTS) else " (empty)"))
    text = raw.get("txt", b"").decode("utf-8", "replace").strip()
    if "json" in raw:
        try:
            meta = json.loads(raw["json"])
        except (ValueError, UnicodeDecodeError) as err:
            raise BadSample(f"unreadable json ({err})") from None
    else:
        meta = {}
    objs = meta if isinstance(meta, list) else [meta]
    rows = []
    for i, obj in enumerate(objs):
        if not isinstance(obj, dict):
            raise BadSample(f"json row {i} is a {type(obj).__name__}, not an object")
        obj = {k: v for k, v in obj.items() if v is not None}
        if not any(k in obj for k in ANSWER_KEYS) and text:
            obj["caption"] = text  # video2dataset's caption file
        if not any(k in obj for k in ANSWER_KEYS):
            raise BadSample("no text (no answer, caption or label in the json, no .txt)")
        obj["id"] = str(obj.get("id", key if len(objs) == 1 else f"{key}/{i}"))
        obj["video"] = "/"  # replaced below: the video is the sample's bytes
        try:
            row = parse_row(obj, "/", path=f"{url}#{key}.json")
        except ManifestError as err:
            raise BadSample(err.reason if err.key is None else f"key '{err.key}': {err.reason}") from None
        rows.append(dataclasses.replace(row, video=f"{url}#{key}.{ext}"))
    if not rows:
        raise BadSample("no text (an empty json list)")
    return ShardSample(url, key, ext, raw[ext], rows)


def read_rows(source: str) -> tuple[list[Sample], dict[str, dict[str, str]]]:
    """Every row of every shard, without decoding any video (for the tokenizer and the training
    set's statistics), and the samples skipped per shard ({url: {key: reason}})."""
    rows, skipped = [], {}
    for url in shard_urls(source):
        for raw in raw_samples(url):
            try:
                rows += parse_sample(raw).rows
            except BadSample as err:
                skipped.setdefault(url, {})[raw["__key__"]] = str(err)
    return rows, skipped


def write_text_index(rows: list[Sample], path: str | os.PathLike) -> int:
    """The shards' rows without their videos, as JSON Lines: what a run's first start reads
    (`data.shard_text`) instead of every shard's text. Returns the number of rows."""
    return write_manifest(path, ({k: v for k, v in r.to_dict().items() if k != "video"} for r in rows))


def check_text_index(source: str) -> None:
    """A local text index must exist (checked before any work; a URL is opened when read)."""
    if not _remote(source) and not os.path.isfile(os.path.expanduser(source)):
        raise ShardError(f"config key 'data.shard_text': {source} does not exist (write it with "
                         f"`mirasol shard --text-of SHARDS --out DIR`, or leave the key out to read the shards)")


def read_text_index(source: str) -> list[Sample]:
    """`data.shard_text`: the rows of a text index (a path or URL, opened as shards are)."""
    from webdataset.gopen import gopen

    check_text_index(source)
    rows = []
    try:
        with gopen(source if _remote(source) else os.path.expanduser(source), "rb") as f:
            for n, obj in manifest_objects(f, source):
                if isinstance(obj, dict):
                    obj = {**obj, "video": "/"}  # the text of a shard's sample: its video is in the shard
                rows.append(parse_row(obj, "/", line=n, path=source))
    except OSError as err:
        raise ShardError(f"config key 'data.shard_text': {source} cannot be read ({err})") from None
    if not rows:
        raise ShardError(f"config key 'data.shard_text': {source} holds no rows")
    return rows


def decode_sample(sample: ShardSample, cfg: MirasolConfig, start: float | None, end: float | None):
    """(video uint8 [F, 3, S, S], audio float16 [n_mels, A], info): what a clip store row holds,
    decoded from the bytes in the shard by the very path a file takes (cache.decode_clip)."""
    from mirasol.data.cache import decode_clip

    return decode_clip(sample.media, cfg, start, end, name=f"{sample.url}#{sample.key}.{sample.ext}")


# --- writing ------------------------------------------------------------------------------------
def write_shards(samples: list[Sample], out: str | os.PathLike, shard_size: int, prefix: str = "shard",
                 log=None) -> dict:
    """Write the clips of manifest rows into tar shards of `shard_size` clips each:
    OUT/PREFIX-00000.tar, ... Rows about one clip (same video, start, end) become one sample whose
    json is the list of their rows; their text also goes to OUT/PREFIX-text.jsonl (the text index).
    Returns {"shards": [...], "pattern": brace pattern, "text": the index, "clips", "rows",
    "missing": rows whose video file is missing}."""
    from webdataset.writer import ShardWriter

    if shard_size < 1:
        raise ShardError(f"shard size must be >= 1, got {shard_size}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clips: dict[tuple, list[Sample]] = {}
    for s in samples:
        clips.setdefault((os.path.abspath(s.video), s.start, s.end), []).append(s)
    missing = [s.id for (video, _, _), rows in clips.items() if not os.path.isfile(video) for s in rows]
    written = [(k, rows) for k, rows in clips.items() if os.path.isfile(k[0])]
    paths = []
    with ShardWriter(str(out / f"{prefix}-%05d.tar"), maxcount=shard_size, verbose=0, encoder=False,
                     mtime=0.0, post=paths.append) as writer:
        for n, ((video, _, _), rows) in enumerate(written):
            ext = Path(video).suffix.lstrip(".").lower() or "mp4"
            if ext not in VIDEO_EXTS:
                ext = "mp4"
            meta = [{k: v for k, v in r.to_dict().items() if k != "video"} for r in rows]
            writer.write({"__key__": f"{n:09d}", ext: Path(video).read_bytes(),
                          "json": json.dumps(meta[0] if len(meta) == 1 else meta, ensure_ascii=False).encode()})
    if not written:  # ShardWriter opened a first (empty) shard anyway
        paths = sorted(str(p) for p in out.glob(f"{prefix}-*.tar"))
    if log is not None and missing:
        print(f"{len(missing)} rows skipped: video file missing (first: {missing[0]})", file=log)
    last = len(paths) - 1
    pattern = str(out / (f"{prefix}-00000.tar" if last == 0 else f"{prefix}-{{00000..{last:05d}}}.tar"))
    text = out / f"{prefix}-text.jsonl"
    write_text_index([r for _, rows in written for r in rows], text)
    return {"shards": paths, "pattern": pattern, "text": str(text), "clips": len(written),
            "rows": sum(len(r) for _, r in written), "missing": len(missing)}


def unpack_dir(source: str) -> Path:
    """Where `unpack` puts a source's files: beside local shards (<folder>/.mirasol_unpacked/<hash>),
    else ~/.cache/mirasol/unpacked/<hash> (MIRASOL_UNPACK_DIR overrides the parent folder)."""
    digest = hashlib.sha1(str(source).encode()).hexdigest()[:10]
    if os.environ.get("MIRASOL_UNPACK_DIR"):
        return Path(os.environ["MIRASOL_UNPACK_DIR"]) / digest
    first = shard_urls(source)[0]
    if _remote(first):
        return Path("~/.cache/mirasol/unpacked").expanduser() / digest
    return Path(first).resolve().parent / ".mirasol_unpacked" / digest


def unpack(source: str, out: str | os.PathLike | None = None) -> Path:
    """Shards -> video files + manifest.jsonl (the skipped samples in skipped.json); returns the
    manifest. Done once: a folder that holds a manifest.jsonl is reused. For evaluation and
    validation sets, which are read by row, not streamed."""
    out = Path(out) if out is not None else unpack_dir(source)
    manifest = out / "manifest.jsonl"
    if manifest.exists():
        return manifest
    rows, skipped, seen = [], {}, set()
    for s, url in enumerate(shard_urls(source)):
        for raw in raw_samples(url):
            try:
                sample = parse_sample(raw)
            except BadSample as err:
                skipped.setdefault(url, {})[raw["__key__"]] = str(err)
                continue
            video = out / "videos" / f"{s:05d}" / f"{sample.key}.{sample.ext}"
            video.parent.mkdir(parents=True, exist_ok=True)
            video.write_bytes(sample.media)
            for r in sample.rows:
                rid = r.id if r.id not in seen else f"{s:05d}/{r.id}"
                seen.add(rid)
                rows.append({**r.to_dict(), "id": rid, "video": str(video.relative_to(out))})
    if not rows:
        raise ShardError(f"{source}: no usable sample in its shards")
    (out / "skipped.json").write_text(json.dumps(skipped, indent=1))
    tmp = out / "manifest.jsonl.tmp"
    write_manifest(tmp, rows)
    tmp.replace(manifest)
    return manifest


# --- streaming for training ---------------------------------------------------------------------
def shuffled(samples: Iterator[dict], size: int, rng: np.random.Generator) -> Iterator[dict]:
    """`samples` in a random order, holding at most `size` of them at a time (a shuffle buffer; a
    size of 0 or 1 keeps the order). The order is a function of the rng's seed, so a lane resumes by
    replaying its shard to its position. Damaged data after some samples: those are given first."""
    if size <= 1:
        yield from samples
        return
    held: list[dict] = []
    try:
        for sample in samples:
            if len(held) < size:
                held.append(sample)
                continue
            j = int(rng.integers(size))
            yield held[j]
            held[j] = sample
    except ShardError:
        rng.shuffle(held)
        yield from held
        raise
    rng.shuffle(held)
    yield from held


def shard_rng(seed: int, epoch: int, url: str) -> np.random.Generator:
    """The generator of one shard's sample order in one epoch (the same in every lane split)."""
    digest = hashlib.sha256(f"{seed}:{epoch}:{url}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def lane_shards(urls: list[str], lane: int, lanes: int, seed: int, epoch: int) -> list[str]:
    """The shards lane `lane` of `lanes` reads in `epoch`: every lanes-th of the list permuted by (seed, epoch)."""
    perm = torch.randperm(len(urls), generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()
    return [urls[i] for i in perm[lane::lanes]]


class _Lane:
    """One lane's rows, in order, from its position [epoch, shard, sample, row] on (sample: the
    n-th in the lane's shuffled order of that shard)."""

    def __init__(self, lane: int, urls, lanes: int, seed: int, shuffle: int, position, make_item):
        self.lane, self.urls, self.lanes, self.seed, self.shuffle = lane, urls, lanes, seed, shuffle
        self.position = list(position)
        self.make_item = make_item
        self.skips: list[tuple[str, str, str]] = []  # (shard, key, reason) since last taken

    def rows(self) -> Iterator[dict]:
        epoch, slot, first, row0 = self.position
        while True:
            shards, any_rows = lane_shards(self.urls, self.lane, self.lanes, self.seed, epoch), False
            whole = slot == 0 and first == 0 and row0 == 0  # this pass reads the lane's whole epoch
            for slot in range(slot, len(shards)):
                url = shards[slot]
                n = first
                order = shuffled(raw_samples(url), self.shuffle, shard_rng(self.seed, epoch, url))
                try:
                    for n, raw in enumerate(order):
                        if n < first:  # replaying the shard up to the saved position: nothing decoded
                            continue
                        try:
                            sample = parse_sample(raw)
                            items = self.make_item(sample, row0)
                        except BadSample as err:
                            self.skips.append((url, raw["__key__"], str(err)))
                            continue
                        for r, item in enumerate(items, start=row0):
                            last = r == len(sample.rows) - 1
                            self.position = [epoch, slot, n + 1, 0] if last else [epoch, slot, n, r + 1]
                            any_rows = True
                            yield item
                        row0 = 0
                except ShardError as err:  # a damaged shard: what came before it counted; go on
                    self.skips.append((url, f"after sample {n}", str(err)))
                first, row0 = 0, 0
                self.position = [epoch, slot + 1, 0, 0]
            if whole and not any_rows:
                raise ShardError(f"lane {self.lane}: no usable sample in its shards of epoch {epoch} "
                                 f"({', '.join(shards[:3])}{' ...' if len(shards) > 3 else ''})")
            epoch, slot = epoch + 1, 0
            self.position = [epoch, 0, 0, 0]


class ShardStream(torch.utils.data.IterableDataset):
    """One process's lanes, as a DataLoader dataset: each worker yields, for every step, one item:
    {"lanes": [(lane, rows, position after them)], "skips": [(shard, key, reason)]}."""

    def __init__(self, urls: list[str], cfg: MirasolConfig, tokenizer, max_len: int, batch_size: int,
                 lanes: int, seed: int, rank: int, world: int, positions: list, shuffle: int = 0):
        if lanes % world or batch_size % lanes:
            raise ConfigError(f"config key 'data.shard_lanes': {lanes} lanes must be a multiple of the "
                              f"{world} processes and divide train.batch_size={batch_size}")
        if len(urls) < lanes:
            raise ConfigError(f"config key 'data.shard_lanes': {lanes} lanes need at least as many shards; "
                              f"the source has {len(urls)}: write smaller shards or set fewer lanes")
        self.urls, self.cfg, self.tokenizer, self.max_len = urls, cfg, tokenizer, max_len
        self.per_lane, self.lanes, self.seed, self.shuffle = batch_size // lanes, lanes, seed, shuffle
        own = lanes // world
        self.mine = list(range(rank * own, (rank + 1) * own))
        self.positions = positions

    def _items(self, sample: ShardSample, row0: int) -> list[dict]:
        from mirasol.data.dataset import chunk_mask
        from mirasol.media.decode import MediaError

        first = sample.rows[0]
        try:
            video, audio, info = decode_sample(sample, self.cfg, first.start, first.end)
        except MediaError as err:
            raise BadSample(str(err)) from None
        media = {"video": torch.from_numpy(np.array(video)),
                 "audio": torch.from_numpy(np.asarray(audio, dtype=np.float32)),
                 "chunk_mask": chunk_mask(info.get("valid_chunks"), self.cfg.num_chunks),
                 "clip": f"{sample.url}#{sample.key}"}
        items = []
        for s in sample.rows[row0:]:
            input_ids, labels = self.tokenizer.encode_example(prompt_text(s), s.answer, self.max_len)
            items.append({**media, "input_ids": input_ids, "labels": labels, "id": s.id,
                          "prompt_ids": self.tokenizer.encode_prompt(prompt_text(s), self.max_len), "index": 0})
        return items

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, n = (info.id, info.num_workers) if info is not None else (0, 1)
        lanes = [_Lane(l, self.urls, self.lanes, self.seed, self.shuffle, self.positions[l], self._items)
                 for i, l in enumerate(self.mine) if i % n == wid]
        streams = [lane.rows() for lane in lanes]
        while True:
            part = []
            for lane, rows in zip(lanes, streams):
                part.append((lane.lane, [next(rows) for _ in range(self.per_lane)], list(lane.position)))
            skips = [s for lane in lanes for s in lane.skips]
            for lane in lanes:
                lane.skips = []
            yield {"lanes": part, "skips": skips}


def _identity(x):
    return x


class ShardLoader:
    """The training batches of a shard source for this process (see the module doc): iterate it
    for collated batches; `state_dict()` (called by every process: it gathers) is the position to
    save with a checkpoint, `state` the one to start from."""

    def __init__(self, source: str, cfg: MirasolConfig, tokenizer, max_len: int, batch_size: int, seed: int,
                 rank: int = 0, world: int = 1, workers: int = 0, lanes: int = 0, state: dict | None = None,
                 shuffle: int = 0):
        urls = shard_urls(source)
        if state is not None:
            if state.get("source") != str(source):
                raise ConfigError(f"--train {source}: the checkpoint was trained from {state.get('source')}; "
                                  "resume with the same shards")
            lanes = int(state["lanes"])
            shuffle = int(state.get("shuffle", 0))  # (checkpoints from before the buffer read in order)
        lanes = lanes or world * max(1, workers)
        positions = [list(p) for p in state["positions"]] if state else [[0, 0, 0, 0] for _ in range(lanes)]
        self.source, self.seed, self.lanes, self.rank, self.world = str(source), seed, lanes, rank, world
        self.shuffle = shuffle
        self.dataset = ShardStream(urls, cfg, tokenizer, max_len, batch_size, lanes, seed, rank, world, positions,
                                   shuffle)
        self.workers, self.pad_id = workers, tokenizer.pad_id
        self.positions = {l: positions[l] for l in self.dataset.mine}
        self.skipped: dict[str, dict[str, str]] = {k: dict(v) for k, v in (state or {}).get("skipped", {}).items()}
        self.loader = torch.utils.data.DataLoader(self.dataset, batch_size=None, num_workers=workers,
                                                  collate_fn=_identity, persistent_workers=workers > 0)

    def __iter__(self):
        from mirasol.data.dataset import collate

        parts = iter(self.loader)
        while True:
            by_lane = {}
            for _ in range(max(1, self.workers)):  # the DataLoader takes one item from each worker in turn
                part = next(parts)
                for lane, rows, position in part["lanes"]:
                    by_lane[lane] = rows
                    self.positions[lane] = position
                for url, key, reason in part["skips"]:
                    self.skipped.setdefault(url, {})[key] = reason
            rows = [row for lane in sorted(by_lane) for row in by_lane[lane]]
            for i, row in enumerate(rows):
                row["index"] = i
            self._trace(rows)
            yield collate(rows, self.pad_id)

    def _trace(self, rows) -> None:
        """MIRASOL_SHARD_TRACE=PREFIX: append the ids of each batch's rows to PREFIX.rank<R>.jsonl
        (to see what each process trained on)."""
        prefix = os.environ.get("MIRASOL_SHARD_TRACE")
        if prefix:
            with open(f"{prefix}.rank{self.rank}.jsonl", "a") as f:
                f.write(json.dumps({"ids": [r["id"] for r in rows], "clips": [r["clip"] for r in rows]}) + "\n")

    def skipped_counts(self) -> dict[str, int]:
        return {url: len(keys) for url, keys in sorted(self.skipped.items())}

    def state_dict(self) -> dict:
        """Every lane's position and the skipped samples, gathered from all processes (a collective
        call under torch.distributed). Plain lists, strings and ints: train_state.pt stays weights_only."""
        mine = {"positions": self.positions, "skipped": self.skipped}
        if torch.distributed.is_initialized() and self.world > 1:
            parts = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(parts, mine)
        else:
            parts = [mine]
        positions: dict[int, list] = {}
        skipped: dict[str, dict[str, str]] = {}
        for p in parts:
            positions.update(p["positions"])
            for url, keys in p["skipped"].items():
                skipped.setdefault(url, {}).update(keys)
        return {"source": self.source, "lanes": self.lanes, "seed": self.seed, "shuffle": self.shuffle,
                "positions": [positions[l] for l in range(self.lanes)], "skipped": skipped}
