"""Text tokenizer and the token sequence format shared by training, evaluation and generation.

Byte-level BPE trained with Hugging Face ``tokenizers``:

- specials first, in this id order: ``<pad>`` = 0, ``<bos>`` = 1, ``<eos>`` = 2, ``<sep>`` = 3 (the
  defaults of ``MirasolConfig.pad/bos/eos/sep_token_id``); then the 256 byte symbols; then merges.
  Any Unicode text is representable (bytes), so accents, CJK and emoji round-trip.
- a space is put in front of every text before splitting (``add_prefix_space``), so a word is
  tokenized the same at the start of a text as in the middle: the answer ``red`` encoded on its
  own (as in training, evaluation and multiple-choice scoring) gives the same ids as ``red`` in
  ``the square is red``. :meth:`MirasolTokenizer.decode` strips the leading space again.
- no normalisation (no lower-casing): decode(encode(s)) == s for any s without leading or
  trailing whitespace.
- text that happens to contain ``<eos>`` and friends is encoded as plain text, never as the special.
- training is deterministic: the same texts give a byte-identical tokenizer.json.

Sequence format (one place for all users)::

    prompt:   [bos] prompt-tokens [sep]                    encode_prompt
    example:  [bos] prompt-tokens [sep] answer-tokens [eos] encode_example -> input_ids
    labels:   -100 ... -100       -100  answer-tokens [eos]  (same length as input_ids)

``labels[i]`` is the target for position ``i`` itself (HF convention: the model shifts, i.e. the
logits at position i-1 are scored against labels[i]); so the loss covers the answer tokens and the
final eos, and generation starts right after ``sep`` and stops at ``eos``. Padding is on the right
with ``pad`` in input_ids and -100 in labels (:func:`pad_examples`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mirasol.config import IGNORE_INDEX
from mirasol.errors import MirasolError

PAD, BOS, EOS, SEP = "<pad>", "<bos>", "<eos>", "<sep>"
SPECIAL_TOKENS = (PAD, BOS, EOS, SEP)  # ids 0, 1, 2, 3
TOKENIZER_FILE = "tokenizer.json"
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256  # specials + one symbol per byte


class TokenizerError(MirasolError, ValueError):
    """A tokenizer file cannot be used, or a setting or text does not fit the sequence format."""


def _tokenizer_file(path: str | os.PathLike) -> Path:
    """``path`` itself if it names a file (existing, or ending in .json), else path/tokenizer.json."""
    path = Path(path)
    if path.is_dir() or (not path.exists() and path.suffix.lower() != ".json"):
        return path / TOKENIZER_FILE
    return path


class MirasolTokenizer:
    """Byte-level BPE with the Mirasol specials and sequence format (see the module docstring)."""

    def __init__(self, tokenizer: Tokenizer):
        for expected_id, token in enumerate(SPECIAL_TOKENS):
            actual = tokenizer.token_to_id(token)
            if actual != expected_id:
                specials = ", ".join(f"{t}={i}" for i, t in enumerate(SPECIAL_TOKENS))
                raise TokenizerError(f"tokenizer: special token {token} has id {actual}, expected {expected_id} "
                                     f"(specials must be {specials})")
        # Text containing "<eos>" etc. is encoded as ordinary characters (runtime setting, not saved;
        # tokenizers >= 0.19 has it, older versions would match the specials inside text).
        if hasattr(tokenizer, "encode_special_tokens"):
            tokenizer.encode_special_tokens = True
        self._tok = tokenizer

    # ---------------------------------------------------------------------------------------------
    # building, saving, loading

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 512, min_frequency: int = 1) -> "MirasolTokenizer":
        """Train on ``texts`` (empty strings and None are ignored). The vocabulary holds at most
        ``vocab_size`` entries (fewer when the texts run out of pairs to merge)."""
        if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
            raise TokenizerError(f"vocab_size must be an integer >= {MIN_VOCAB_SIZE} "
                                 f"(4 specials + 256 bytes), got {vocab_size!r}")
        if not isinstance(min_frequency, int) or min_frequency < 1:
            raise TokenizerError(f"min_frequency must be a positive integer, got {min_frequency!r}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator((t for t in texts if isinstance(t, str) and t.strip()), trainer=trainer)
        return cls(tok)

    def save(self, path: str | os.PathLike) -> Path:
        """Write tokenizer.json (``path`` is the file or its folder), atomically. Returns the file."""
        file = _tokenizer_file(path)
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", suffix=".tmp", dir=file.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
                f.write(self.to_json())
            os.chmod(tmp, 0o644)
            os.replace(tmp, file)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return file

    def to_json(self) -> str:
        return self._tok.to_str(pretty=True)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MirasolTokenizer":
        """Load tokenizer.json (``path`` is the file or a folder holding it, e.g. a run directory)."""
        file = _tokenizer_file(path)
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer at {file}")
        try:
            tok = Tokenizer.from_file(str(file))
        except Exception as err:  # the tokenizers library raises a bare Exception on a bad file
            raise TokenizerError(f"{file}: not a tokenizer file ({err})") from None
        try:
            return cls(tok)
        except TokenizerError as err:
            raise TokenizerError(f"{file}: {err}") from None

    @classmethod
    def from_json(cls, text: str) -> "MirasolTokenizer":
        return cls(Tokenizer.from_str(text))

    # ---------------------------------------------------------------------------------------------
    # basics

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def bos_id(self) -> int:
        return 1

    @property
    def eos_id(self) -> int:
        return 2

    @property
    def sep_id(self) -> int:
        return 3

    @property
    def special_ids(self) -> tuple[int, int, int, int]:
        return (self.pad_id, self.bos_id, self.eos_id, self.sep_id)

    @property
    def backend(self) -> Tokenizer:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tok

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without any special token."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special tokens are dropped, surrounding whitespace stripped."""
        ids = [int(i) for i in ids]
        return self._tok.decode(ids, skip_special_tokens=True).strip()

    def decode_answer(self, ids: Sequence[int]) -> str:
        """Text of generated answer ids: everything before the first ``eos`` (specials dropped)."""
        ids = [int(i) for i in ids]
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.decode(ids)

    # ---------------------------------------------------------------------------------------------
    # sequence format

    def encode_prompt(self, prompt: str, max_len: int | None = None) -> list[int]:
        """``[bos] + encode(prompt) + [sep]``; the model then generates the answer and ``eos``.
        With ``max_len``, the prompt tokens are cut (keeping the beginning) so the whole is at
        most ``max_len`` long."""
        ids = self.encode(prompt)
        if max_len is not None:
            if max_len < 2:
                raise TokenizerError(f"max_len={max_len} leaves no room for bos and sep")
            ids = ids[: max_len - 2]
        return [self.bos_id, *ids, self.sep_id]

    def encode_answer(self, answer: str) -> list[int]:
        """Target ids of an answer: ``encode(answer) + [eos]`` (what the loss and scoring cover)."""
        return [*self.encode(answer), self.eos_id]

    def encode_example(self, prompt: str, answer: str, max_len: int) -> tuple[list[int], list[int]]:
        """``(input_ids, labels)`` for training (see the module docstring).

        input_ids = encode_prompt(prompt) + encode(answer) + [eos]; labels = -100 on the prompt
        positions (bos, prompt, sep) and equal to input_ids on the answer and eos. If the result is
        longer than ``max_len`` the prompt is cut (its beginning is kept); if even an empty prompt
        leaves no room for the answer, ValueError.
        """
        target = self.encode_answer(answer)
        room = max_len - 2 - len(target)  # prompt tokens that fit beside bos, sep and the answer
        if room < 0:
            raise TokenizerError(f"answer of {len(target) - 1} tokens (+ eos) does not fit in max_len={max_len} "
                                 f"with bos and sep ({answer[:60]!r})")
        prompt_ids = self.encode_prompt(prompt)
        if len(prompt_ids) - 2 > room:
            prompt_ids = [self.bos_id, *prompt_ids[1: 1 + room], self.sep_id]
        input_ids = prompt_ids + target
        labels = [IGNORE_INDEX] * len(prompt_ids) + target
        return input_ids, labels

    def encode_candidates(self, answers: Sequence[str]) -> list[list[int]]:
        """Target ids of each candidate answer (``encode(answer) + [eos]``, exactly the label
        tokens encode_example trains on), for scoring multiple choice / closed-set labels after
        ``encode_prompt(prompt)``."""
        return [self.encode_answer(a) for a in answers]


def pad_examples(examples: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int = 0,
                 length: int | None = None) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """Right-pad ``(input_ids, labels)`` pairs to one length (the longest, or ``length``).

    Returns ``(input_ids, labels, attention_mask)`` as lists of lists: pad_id / -100 / 0 on padding.
    """
    longest = max((len(ids) for ids, _ in examples), default=0)
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"an example has {longest} tokens, more than length={length}")
    input_ids, labels, mask = [], [], []
    for ids, lab in examples:
        if len(ids) != len(lab):
            raise ValueError("input_ids and labels differ in length")
        n = length - len(ids)
        input_ids.append([*ids, *([pad_id] * n)])
        labels.append([*lab, *([IGNORE_INDEX] * n)])
        mask.append([1] * len(ids) + [0] * n)
    return input_ids, labels, mask


def tokenizer_texts(samples) -> list[str]:
    """The texts a tokenizer should be trained on for these samples: prompts (questions and the
    fixed task prompts), answers and choices."""
    from mirasol.data.manifest import TASK_PROMPTS, prompt_text

    texts = list(TASK_PROMPTS.values())
    for sample in samples:
        texts.append(prompt_text(sample))
        texts.append(sample.answer)
        if sample.choices:
            texts.extend(sample.choices)
    return texts


def train_tokenizer_from_manifests(paths: Iterable[str | os.PathLike] | str | os.PathLike, vocab_size: int = 512,
                                   min_frequency: int = 1) -> MirasolTokenizer:
    """Read manifests (one path or several) and train a tokenizer on their text."""
    from mirasol.data.manifest import read_manifest

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    samples = [s for p in paths for s in read_manifest(p)]
    return MirasolTokenizer.train(tokenizer_texts(samples), vocab_size=vocab_size, min_frequency=min_frequency)


class BackboneTokenizer(MirasolTokenizer):
    """A pretrained LM's own tokenizer (its tokenizer.json) with Mirasol's sequence format: the
    special ids come from the model config (mirasol.model.pretrained.resolve_config: bos/eos are the LM's,
    pad and sep are new ids after its vocabulary, with their own learned embeddings)."""

    def __init__(self, tokenizer: Tokenizer, cfg):
        if hasattr(tokenizer, "encode_special_tokens"):
            tokenizer.encode_special_tokens = True
        self._tok, self._cfg = tokenizer, cfg

    @classmethod
    def load(cls, path: str | os.PathLike, cfg) -> "BackboneTokenizer":  # type: ignore[override]
        file = _tokenizer_file(path)
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer at {file}")
        return cls(Tokenizer.from_file(str(file)), cfg)

    @property
    def vocab_size(self) -> int:
        return self._cfg.vocab_size

    @property
    def pad_id(self) -> int:
        return self._cfg.pad_token_id

    @property
    def bos_id(self) -> int:
        return self._cfg.bos_token_id

    @property
    def eos_id(self) -> int:
        return self._cfg.eos_token_id

    @property
    def sep_id(self) -> int:
        return self._cfg.sep_token_id

    def decode(self, ids: Sequence[int]) -> str:
        limit = self._tok.get_vocab_size(with_added_tokens=True)
        ids = [int(i) for i in ids if int(i) not in self.special_ids and int(i) < limit]
        return self._tok.decode(ids, skip_special_tokens=True).strip()


def tokenizer_for(cfg, path: str | os.PathLike) -> MirasolTokenizer:
    """The tokenizer stored at `path` (a run directory or tokenizer.json) for model config `cfg`."""
    return BackboneTokenizer.load(path, cfg) if cfg.text_backbone else MirasolTokenizer.load(path)
