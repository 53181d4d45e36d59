"""Cached clips + manifest rows -> model batches. Clips come from the cache (`mirasol prepare`):
a raw store needs no decoding, a compressed one decodes its frames here (in the loader worker),
store "none" decodes the video file; text is tokenized once up front."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from mirasol.config import IGNORE_INDEX, ConfigError
from mirasol.data.cache import ClipCache, clip_key
from mirasol.data.manifest import Sample, prompt_text
from mirasol.data.tokenizer import MirasolTokenizer, TokenizerError


class ClipDataset(Dataset):
    """Manifest rows whose clip is cached. `skipped` counts rows whose clip could not be used."""

    def __init__(self, samples: list[Sample], cache: ClipCache, tokenizer: MirasolTokenizer, max_len: int):
        self.cache, self.tokenizer = cache, tokenizer
        self.samples = [s for s in samples if clip_key(s.video, s.start, s.end) in cache]
        self.skipped = len(samples) - len(self.samples)
        self.keys = [clip_key(s.video, s.start, s.end) for s in self.samples]
        ids: dict[str, int] = {}
        self.clip_ids = [ids.setdefault(k, len(ids)) for k in self.keys]  # rows of one clip share an id
        self.examples = []
        for s in self.samples:
            try:
                self.examples.append(tokenizer.encode_example(prompt_text(s), s.answer, max_len))
            except TokenizerError as err:
                raise TokenizerError(f"manifest row {s.id!r}: {err}; raise data.max_text_len "
                                     "(or model.max_text_len) or shorten the answer") from None
        self.prompts = [tokenizer.encode_prompt(prompt_text(s), max_len) for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        video, audio, info = self.cache.get(self.keys[i])
        input_ids, labels = self.examples[i]
        return {
            "video": torch.from_numpy(np.array(video)),  # uint8; scaled in collate (4x less to move)
            "audio": torch.from_numpy(np.asarray(audio, dtype=np.float32)),
            "chunk_mask": chunk_mask(info.get("valid_chunks"), self.cache.cfg.num_chunks),
            "input_ids": input_ids,
            "labels": labels,
            "prompt_ids": self.prompts[i],
            "index": i,
            "clip": self.clip_ids[i],
        }


def chunk_mask(valid_chunks: int | None, num_chunks: int) -> torch.Tensor:
    """[T] bool: True for the chunks with real content (the first always counts, so that a
    decoder never attends to nothing)."""
    valid = num_chunks if valid_chunks is None else max(1, int(valid_chunks))
    return torch.arange(num_chunks) < valid


def _pad(rows: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        if left:
            out[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        else:
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def collate(items: list[dict], pad_id: int = 0) -> dict:
    """Stack each distinct clip once (video to floats in [0, 1], its chunk_mask) and point every
    row at its clip with `media_index`, so questions about one clip share one media encoding. Right-pad
    input_ids/labels, left-pad prompts."""
    slot: dict = {}
    media_index, clips = [], []
    for n, it in enumerate(items):
        key = it.get("clip", ("row", n))  # items without a clip id are clips of their own
        if key not in slot:
            slot[key] = len(clips)
            clips.append(it)
        media_index.append(slot[key])
    return {
        "video": torch.stack([it["video"] for it in clips]).float().div_(255.0),
        "audio": torch.stack([it["audio"] for it in clips]),
        "chunk_mask": torch.stack([it["chunk_mask"] for it in clips]),
        "media_index": torch.tensor(media_index),
        "input_ids": _pad([it["input_ids"] for it in items], pad_id),
        "labels": _pad([it["labels"] for it in items], IGNORE_INDEX),
        "prompt_ids": _pad([it["prompt_ids"] for it in items], pad_id, left=True),
        "index": torch.tensor([it["index"] for it in items]),
    }


MEDIA_KEYS = ("video", "audio", "chunk_mask")  # one entry per clip, not per row


def select_rows(batch: dict, lo: int, hi: int) -> dict:
    """Rows lo..hi of a collated batch with only the clips they use (a micro-batch)."""
    used, media_index = torch.unique(batch["media_index"][lo:hi], return_inverse=True)
    part = {k: v[lo:hi] for k, v in batch.items() if torch.is_tensor(v) and k not in MEDIA_KEYS}
    part.update({k: batch[k][used] for k in MEDIA_KEYS})
    part["media_index"] = media_index
    return part


class EpochBatches:
    """Deterministic batches of a global batch size: batch b comes from an order seeded by
    (seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would. With
    several processes, rank r takes the r-th contiguous share of each global batch.

    With `questions_per_clip` k > 1 (and `clips`, the clip id of every row), the epoch's order
    keeps up to k rows of the same clip next to each other: every row still comes once per
    epoch, a batch of B rows holds fewer clips, and `collate` encodes each clip once. Runs are
    cut at k, so B / k clips per batch holds only when every clip has a multiple of k rows; with
    11 rows per clip, k = 8 gives runs of 8 and 3 and batches of 32 rows span 6.6 clips on average,
    while k = 11 and B = 33 give exactly 3 (the quickstart's recipe)."""

    def __init__(self, size: int, batch_size: int, seed: int, start_batch: int = 0, rank: int = 0, world: int = 1,
                 clips: list[int] | None = None, questions_per_clip: int = 1):
        if size < batch_size:
            raise ConfigError(f"config key 'train.batch_size': the dataset has {size} usable samples, "
                              f"fewer than batch_size={batch_size}")
        if questions_per_clip > 1 and (clips is None or len(clips) != size):
            raise ValueError("questions_per_clip > 1 needs the clip id of every row")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start, self.rank, self.world = start_batch, rank, world
        self.clips, self.k = clips, questions_per_clip
        self.per_epoch = size // batch_size
        self._order: tuple[int, list[int]] | None = None

    def order(self, epoch: int) -> list[int]:
        if self._order is None or self._order[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            perm = torch.randperm(self.size, generator=g).tolist()
            if self.k > 1:
                by_clip: dict[int, list[int]] = {}
                for i in perm:  # each clip's rows, in shuffled order
                    by_clip.setdefault(self.clips[i], []).append(i)
                runs = [rows[j:j + self.k] for rows in by_clip.values() for j in range(0, len(rows), self.k)]
                perm = [i for r in torch.randperm(len(runs), generator=g).tolist() for i in runs[r]]
            self._order = (epoch, perm)
        return self._order[1]

    def batch(self, b: int) -> list[int]:
        epoch, j = divmod(b, self.per_epoch)
        rows = self.order(epoch)[j * self.batch_size:(j + 1) * self.batch_size]
        share = self.batch_size // self.world
        return rows[self.rank * share:(self.rank + 1) * share]

    def __iter__(self):
        b = self.start
        while True:
            yield self.batch(b)
            b += 1


def ready_clips(manifests, cache_dir, data_cfg, model_cfg, samples=None, progress: bool = True) -> None:
    """Get a manifest's clips ready in the clip store, for training and evaluation alike: decode those
    not stored yet (data_cfg: a run config's `data` section: store format, decoding processes),
    print the report, and fail when none of the first manifest's clips could be used."""
    from mirasol.data.cache import prepare, print_report, require_clips

    report = prepare(manifests, cache_dir, model_cfg, workers=data_cfg.prepare_workers, progress=progress,
                     store=data_cfg.store, samples=samples)
    print_report(report, cache_dir)
    require_clips(report, manifests[0], cache_dir)


def open_dataset(samples, cache_dir, data_cfg, model_cfg, tokenizer) -> ClipDataset:
    """The dataset of manifest rows whose clips are in the store (see ready_clips)."""
    max_len = data_cfg.max_text_len or model_cfg.max_text_len
    return ClipDataset(samples, ClipCache(cache_dir, model_cfg, store=data_cfg.store), tokenizer, max_len)
