"""The server's on-disk cache of chunk latents: one safetensors file per (run, video, sampling).

A video's chunk latents do not depend on the question, so they are computed once and every later
question reads them back. An entry holds, for one uploaded file:

    full       [T, m, D]  the chunk latents as streamed (what answers read)
    no_audio   [T, m, D]  the same chunks re-encoded with the audio replaced by silence
    no_video   [T, m, D]  ... with the frames replaced by black
    thumbs     [T, S, S, 3] uint8, the first frame of each chunk as the model saw it (the timeline)

plus string metadata (chunk times, duration, file name shown to the user).

Keys are hex digests of (run id, the file's SHA-256, the sampling settings), computed here: the
file name on disk is always `<key>.safetensors`, never anything a client sent. Entries are written
to a temporary file in the same folder, flushed to disk and renamed over the final name, so a
process killed at any moment leaves either no entry or a whole one (a stray `*.part` is deleted
when the cache is opened). The cache is bounded in bytes: after each write, the least recently
used entries (by modification time, refreshed on every read) are deleted until it fits.

In front of the disk, the entries read most recently are also kept in memory, up to `memory_bytes`
(least recently used dropped first; 0 keeps none), so that asking about the same video again does
not read its whole entry back from disk. Entries are never changed once written, so a copy in
memory is always the file's content; it is dropped with its file.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

KEY = re.compile(r"^[0-9a-f]{64}$")
SUFFIX = ".safetensors"
PART = ".part"
MEMORY_BYTES = 256 * 2**20  # default bound of the entries kept in memory


def file_sha256(path: str | os.PathLike, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def entry_key(run_id: str, file_hash: str, sampling: str) -> str:
    """The cache key (and the video's id in the API) of one file under one run and sampling."""
    return hashlib.sha256(f"{run_id}\n{file_hash}\n{sampling}".encode()).hexdigest()


class LatentCache:
    def __init__(self, root: str | os.PathLike, max_bytes: int, memory_bytes: int = MEMORY_BYTES):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = int(max_bytes)
        self.memory_bytes = int(memory_bytes)
        self._lock = threading.Lock()
        self.writes = 0  # entries written (videos encoded) since start
        self.hits = 0  # reads that found their entry
        self.loads = 0  # of those, the ones read from disk (the rest came from memory)
        self._memory: OrderedDict[str, tuple[dict, dict, int]] = OrderedDict()  # key -> (tensors, meta, bytes)
        for stray in self.root.glob(f"*{PART}"):  # left by a process killed while writing
            stray.unlink(missing_ok=True)
        # key -> file: the only place file names come from (keys were validated when listed)
        self._files = {p.name[: -len(SUFFIX)]: p for p in self.root.glob(f"*{SUFFIX}")
                       if KEY.match(p.name[: -len(SUFFIX)])}

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._files

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._files)

    def size_bytes(self) -> int:
        with self._lock:
            return sum(p.stat().st_size for p in self._files.values() if p.exists())

    def get(self, key: str) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
        """(tensors, metadata) of an entry, or None; marks it as recently used."""
        with self._lock:
            path = self._files.get(key)
            if path is None:
                return None
            try:
                os.utime(path)  # the disk's order of use counts reads served from memory too
                if key in self._memory:
                    self._memory.move_to_end(key)
                    tensors, meta, _ = self._memory[key]
                else:
                    with safe_open(str(path), framework="pt") as f:
                        tensors = {name: f.get_tensor(name) for name in f.keys()}
                        meta = dict(f.metadata() or {})
                    self.loads += 1
                    self._remember(key, tensors, meta)
                self.hits += 1
            except (OSError, ValueError, RuntimeError):  # deleted or unreadable: forget it
                self._files.pop(key, None)
                self._memory.pop(key, None)
                path.unlink(missing_ok=True)
                return None
        return tensors, meta

    def _remember(self, key: str, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        """Keep an entry in memory, dropping the least recently used ones beyond memory_bytes."""
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if size > self.memory_bytes:
            return
        self._memory[key] = (tensors, meta, size)
        total = sum(n for _, _, n in self._memory.values())
        while total > self.memory_bytes:
            _, (_, _, n) = self._memory.popitem(last=False)
            total -= n

    def put(self, key: str, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
        if not KEY.match(key):
            raise ValueError(f"not a cache key: {key!r}")
        final = self.root / f"{key}{SUFFIX}"
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f"{key}.", suffix=PART)
        os.close(fd)
        try:
            save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=meta)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        try:  # make the rename itself durable
            dir_fd = os.open(self.root, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass
        with self._lock:
            self._files[key] = final
            self._memory.pop(key, None)  # a rewritten entry is read afresh
            self.writes += 1
            self._evict(keep=key)

    def _evict(self, keep: str) -> None:
        """Delete least recently used entries until the cache fits (never `keep`, the newest)."""
        sizes = {}
        for k, p in list(self._files.items()):
            try:
                st = p.stat()
                sizes[k] = (st.st_mtime, st.st_size)
            except OSError:
                self._files.pop(k)
                self._memory.pop(k, None)
        total = sum(size for _, size in sizes.values())
        for k, (_, size) in sorted(sizes.items(), key=lambda kv: kv[1][0]):
            if total <= self.max_bytes:
                break
            if k == keep:
                continue
            self._files.pop(k).unlink(missing_ok=True)
            self._memory.pop(k, None)
            total -= size
