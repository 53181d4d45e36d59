"""Cached clips + manifest rows -> model batches. No decoding happens here: clips come from the
cache (`mirasol prepare`), text is tokenized once up front."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from mirasol.data.cache import ClipCache, clip_key
from mirasol.data.manifest import Sample, prompt_text
from mirasol.data.tokenizer import MirasolTokenizer
from mirasol.model import IGNORE_INDEX


class ClipDataset(Dataset):
    """Manifest rows whose clip is cached. `skipped` counts rows whose clip could not be used."""

    def __init__(self, samples: list[Sample], cache: ClipCache, tokenizer: MirasolTokenizer, max_len: int):
        self.cache, self.tokenizer = cache, tokenizer
        self.samples = [s for s in samples if clip_key(s.video, s.start, s.end) in cache]
        self.skipped = len(samples) - len(self.samples)
        self.keys = [clip_key(s.video, s.start, s.end) for s in self.samples]
        self.examples = [tokenizer.encode_example(prompt_text(s), s.answer, max_len) for s in self.samples]
        self.prompts = [tokenizer.encode_prompt(prompt_text(s), max_len) for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        video, audio, _ = self.cache.get(self.keys[i])
        input_ids, labels = self.examples[i]
        return {
            "video": torch.from_numpy(np.array(video)),  # uint8; scaled in collate (4x less to move)
            "audio": torch.from_numpy(np.asarray(audio, dtype=np.float32)),
            "input_ids": input_ids,
            "labels": labels,
            "prompt_ids": self.prompts[i],
            "index": i,
        }


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
    """Stack clips (video to floats in [0, 1]); right-pad input_ids/labels, left-pad prompts."""
    return {
        "video": torch.stack([it["video"] for it in items]).float().div_(255.0),
        "audio": torch.stack([it["audio"] for it in items]),
        "input_ids": _pad([it["input_ids"] for it in items], pad_id),
        "labels": _pad([it["labels"] for it in items], IGNORE_INDEX),
        "prompt_ids": _pad([it["prompt_ids"] for it in items], pad_id, left=True),
        "index": torch.tensor([it["index"] for it in items]),
    }


class EpochBatches:
    """Deterministic batches of a global batch size: batch b comes from a permutation seeded by
    (seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would. With
    several processes, rank r takes every world-th item of each global batch."""

    def __init__(self, size: int, batch_size: int, seed: int, start_batch: int = 0, rank: int = 0, world: int = 1):
        if size < batch_size:
            raise ValueError(f"the dataset has {size} usable samples, fewer than batch_size={batch_size}")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.start, self.rank, self.world = start_batch, rank, world
        self.per_epoch = size // batch_size

    def batch(self, b: int) -> list[int]:
        epoch, j = divmod(b, self.per_epoch)
        perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))
        return perm[j * self.batch_size:(j + 1) * self.batch_size].tolist()[self.rank::self.world]

    def __iter__(self):
        b = self.start
        while True:
            yield self.batch(b)
            b += 1
