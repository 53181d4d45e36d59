"""Manifests: one sample per line, JSON Lines (the user contract in docs/design.md).

    {"id": "s1", "video": "clips/a.mp4", "start": 0.0, "end": 8.0,
     "task": "qa", "question": "what color is the square?", "answer": "red",
     "choices": ["red", "green"], "type": "color"}

Rules enforced by :func:`read_manifest` (each violation raises :class:`ManifestError` naming the
file, the line number and the key):

- every line is a JSON object; blank lines are skipped;
- ``video``: a non-empty string, relative to the manifest's folder or absolute (``~`` expanded);
- ``id``: a non-empty string (an integer is accepted and turned into a string); unique in the
  file. Left out, it defaults to ``line<N>``;
- ``task``: ``qa`` | ``caption`` | ``classify``. Left out, it is inferred: ``qa`` when the row has
  a ``question``, ``caption`` when it has a ``caption``, ``classify`` when it has a ``label``;
- ``qa`` needs a non-empty ``question`` and ``answer``; ``caption`` needs ``answer`` (or its alias
  ``caption``); ``classify`` needs ``answer`` (or its alias ``label``). Both spellings may be given
  only if they agree;
- ``start`` / ``end``: optional finite numbers of seconds, ``0 <= start < end``;
- ``at``: optional finite number of seconds, ``start < at`` (and ``at <= end``): an online row,
  answered from the video before ``at`` only. Every path reads it so: the row's ``end`` becomes
  ``at``, and ``mirasol evaluate --online`` streams the video and answers the row when ``at`` comes;
- ``choices``: optional non-empty list of strings that contains ``answer``;
- ``type``: optional string (an integer is accepted and turned into a string);
- any other key is kept in :attr:`Sample.extra` and otherwise ignored. JSON ``null`` counts as
  absent for the optional keys.

The prompt the text decoder sees is derived here too (:func:`prompt_text`), so that training,
evaluation and ``mirasol ask`` all use the same strings.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from mirasol.errors import MirasolError

TASKS = ("qa", "caption", "classify")

# Fixed prompts for the tasks that have no question. Evaluation and `ask` must use these same
# strings (through prompt_text / prompt_for), or the model sees a prompt it was never trained on.
CAPTION_PROMPT = "caption"
CLASSIFY_PROMPT = "classify"
TASK_PROMPTS = {"caption": CAPTION_PROMPT, "classify": CLASSIFY_PROMPT}

# Keys with a meaning in the manifest; everything else goes to Sample.extra.
KNOWN_KEYS = frozenset({"id", "video", "start", "end", "at", "task", "question", "answer", "choices", "type"})
# Alternative spellings of `answer`, accepted for one task each.
ANSWER_ALIASES = {"caption": "caption", "classify": "label"}


class ManifestError(MirasolError, ValueError):
    """A manifest row is invalid. ``path``, ``line`` (1-based, or None) and ``key`` say where."""

    def __init__(self, path: str | os.PathLike | None, line: int | None, key: str | None, message: str):
        self.path = str(path) if path is not None else None
        self.line = line
        self.key = key
        self.reason = message
        where = self.path or "<manifest>"
        if line is not None:
            where += f":{line}"
        what = f"key '{key}': " if key else ""
        super().__init__(f"{where}: {what}{message}")


@dataclass
class Sample:
    """One manifest row, validated. ``video`` is an absolute path."""

    id: str
    video: str
    task: str
    answer: str
    question: str | None = None
    start: float | None = None
    end: float | None = None
    choices: list[str] | None = None
    type: str | None = None
    at: float | None = None  # an online row: answered from the video before `at` (then also its `end`)
    extra: dict[str, Any] = field(default_factory=dict)
    line: int | None = None
    manifest: str | None = None

    @property
    def prompt(self) -> str:
        return prompt_text(self)

    def to_dict(self, relative_to: str | os.PathLike | None = None) -> dict[str, Any]:
        """The manifest row for this sample (extra keys included). ``video`` is made relative to
        ``relative_to`` when the file lies under that folder, and is absolute otherwise."""
        video = self.video
        if relative_to is not None:
            video = video_path_for_manifest(video, relative_to)
        row: dict[str, Any] = {"id": self.id, "video": video}
        if self.start is not None:
            row["start"] = self.start
        if self.end is not None:
            row["end"] = self.end
        if self.at is not None:
            row["at"] = self.at
        row["task"] = self.task
        if self.question is not None:
            row["question"] = self.question
        row["answer"] = self.answer
        if self.choices is not None:
            row["choices"] = list(self.choices)
        if self.type is not None:
            row["type"] = self.type
        for key, value in self.extra.items():
            row.setdefault(key, value)
        return row


# ------------------------------------------------------------------------------------------------
# prompts and answers


def prompt_for(task: str, question: str | None = None) -> str:
    """The text prompt for a task: the question for ``qa``, a fixed string otherwise."""
    if task == "qa":
        if not question or not question.strip():
            raise ValueError("a qa prompt needs a question")
        return question.strip()
    if task in TASK_PROMPTS:
        return TASK_PROMPTS[task]
    raise ValueError(f"unknown task {task!r} (choose from {', '.join(TASKS)})")


def prompt_text(sample: Sample) -> str:
    """What the text decoder is conditioned on: ``qa`` -> the question; ``caption`` ->
    :data:`CAPTION_PROMPT`; ``classify`` -> :data:`CLASSIFY_PROMPT` (a question given on a caption
    or classify row is kept on the sample but not used)."""
    return prompt_for(sample.task, sample.question)


def answer_text(sample: Sample) -> str:
    """The target text: the answer, the caption or the label."""
    return sample.answer


_ARTICLES = frozenset({"a", "an", "the"})


def normalize_answer(text: str) -> str:
    """Normalise an answer for exact-match accuracy.

    Steps: Unicode NFKC (folds full-width forms), lower case, delete every punctuation character
    (Unicode categories P*, so ``t-shirt`` -> ``tshirt`` and ``don't`` -> ``dont``, as in the SQuAD
    evaluation), drop the articles ``a``, ``an``, ``the`` as whole words, collapse runs of
    whitespace to one space and strip. ``normalize_answer("The Red-Car!") == "redcar"``.
    """
    text = unicodedata.normalize("NFKC", str(text)).lower()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return " ".join(word for word in text.split() if word not in _ARTICLES)


def family(sample) -> str:
    """The family a row is reported under: its `type`, or its task when it has none."""
    return sample.type or sample.task


def exact_match(prediction: str, reference: str) -> bool:
    """True when the two answers are equal after :func:`normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(reference)


# ------------------------------------------------------------------------------------------------
# reading


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_row(
    obj: Any,
    base_dir: str | os.PathLike,
    line: int | None = None,
    path: str | os.PathLike | None = None,
) -> Sample:
    """Validate one decoded manifest row and build its :class:`Sample`.

    ``base_dir`` is the folder relative ``video`` paths are resolved against; ``line`` and
    ``path`` only go into error messages and the Sample.
    """

    def fail(key: str | None, message: str) -> ManifestError:
        return ManifestError(path, line, key, message)

    if not isinstance(obj, dict):
        raise fail(None, f"a row must be a JSON object, got {type(obj).__name__}")

    def optional(key: str) -> Any:  # JSON null counts as absent
        return obj.get(key)

    # id
    raw_id = optional("id")
    if raw_id is None:
        sample_id = f"line{line}" if line is not None else ""
        if not sample_id:
            raise fail("id", "missing")
    elif isinstance(raw_id, str) and raw_id.strip():
        sample_id = raw_id
    elif isinstance(raw_id, int) and not isinstance(raw_id, bool):
        sample_id = str(raw_id)
    else:
        raise fail("id", f"must be a non-empty string, got {raw_id!r}")

    # video
    video = obj.get("video")
    if video is None:
        raise fail("video", "missing")
    if not isinstance(video, str) or not video.strip():
        raise fail("video", f"must be a non-empty string (a path), got {video!r}")
    video_path = Path(os.path.expanduser(video))
    if not video_path.is_absolute():
        video_path = Path(base_dir) / video_path
    video_abs = os.path.abspath(video_path)

    # task
    task = optional("task")
    if task is None:
        if optional("question") is not None:
            task = "qa"
        elif optional("caption") is not None:
            task = "caption"
        elif optional("label") is not None:
            task = "classify"
        else:
            raise fail("task", f"missing (one of {', '.join(TASKS)}), and the row has no question, "
                               "caption or label to infer it from")
    if task not in TASKS:
        raise fail("task", f"must be one of {', '.join(TASKS)}, got {task!r}")

    # question
    question = optional("question")
    if question is not None and not isinstance(question, str):
        raise fail("question", f"must be a string, got {type(question).__name__}")
    if task == "qa":
        if question is None:
            raise fail("question", "missing (task 'qa' needs a question)")
        if not question.strip():
            raise fail("question", "is empty")

    # answer (and its alias for caption / classify)
    answer = optional("answer")
    alias = ANSWER_ALIASES.get(task)
    alias_value = optional(alias) if alias else None
    answer_key = "answer"
    if answer is None and alias_value is not None:
        answer, answer_key = alias_value, alias
    elif answer is not None and alias_value is not None and alias_value != answer:
        raise fail(alias, f"{alias_value!r} disagrees with answer {answer!r}; give one of them")
    if answer is None:
        need = {"qa": "an answer", "caption": "an answer (the caption; alias 'caption')",
                "classify": "an answer (the label; alias 'label')"}[task]
        raise fail("answer", f"missing (task '{task}' needs {need})")
    if not isinstance(answer, str):
        raise fail(answer_key, f"must be a string, got {type(answer).__name__} {answer!r}")
    if not answer.strip():
        raise fail(answer_key, "is empty")

    # start / end
    times: dict[str, float | None] = {}
    for key in ("start", "end", "at"):
        value = optional(key)
        if value is not None:
            if not _is_number(value) or not math.isfinite(value):
                raise fail(key, f"must be a finite number of seconds, got {value!r}")
            if value < 0:
                raise fail(key, f"must be >= 0, got {value}")
            value = float(value)
        times[key] = value
    start, end, at = times["start"], times["end"], times["at"]
    if end is not None and end <= (start or 0.0):
        raise fail("end", f"must be greater than start ({start or 0.0}), got {end}")
    if at is not None:
        if at <= (start or 0.0):
            raise fail("at", f"must be greater than start ({start or 0.0}), got {at}")
        if end is not None and at > end:
            raise fail("at", f"must not be after end ({end}), got {at}")
        end = at  # nothing after `at` may be seen

    # choices
    choices = optional("choices")
    if choices is not None:
        if not isinstance(choices, list) or not choices:
            raise fail("choices", f"must be a non-empty list of strings, got {choices!r}")
        for i, choice in enumerate(choices):
            if not isinstance(choice, str) or not choice.strip():
                raise fail("choices", f"item {i} must be a non-empty string, got {choice!r}")
        if answer not in choices:
            raise fail(answer_key, f"{answer!r} is not one of the choices {choices!r}")
        choices = list(choices)

    # type
    type_ = optional("type")
    if type_ is not None:
        if isinstance(type_, int) and not isinstance(type_, bool):
            type_ = str(type_)
        elif not isinstance(type_, str):
            raise fail("type", f"must be a string, got {type(type_).__name__} {type_!r}")

    used = set(KNOWN_KEYS)
    if answer_key != "answer":
        used.add(answer_key)
    elif alias_value is not None:  # both given and equal
        used.add(alias)
    extra = {k: v for k, v in obj.items() if k not in used}

    return Sample(
        id=sample_id, video=video_abs, task=task, answer=answer, question=question, start=start,
        end=end, choices=choices, type=type_, at=at, extra=extra, line=line,
        manifest=str(path) if path is not None else None,
    )


def manifest_objects(lines: Iterable[bytes], path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """The JSON value of each non-blank line of a JSON Lines file, with its 1-based line number;
    :class:`ManifestError` names a line that is not UTF-8 or not JSON."""
    for line_no, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ManifestError(path, line_no, None, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
        if line_no == 1:
            text = text.lstrip("\ufeff")
        if not text.strip():
            continue
        try:
            yield line_no, json.loads(text.rstrip("\r\n"))  # without the newline, a cut-off row's column is its end
        except json.JSONDecodeError as e:
            raise ManifestError(path, line_no, None, f"not valid JSON: {e.msg} (column {e.colno})") from None


def read_manifest(path: str | os.PathLike) -> list[Sample]:
    """Read and validate a JSON Lines manifest; raise :class:`ManifestError` at the first bad row."""
    path = Path(path)
    base_dir = path.resolve().parent
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    with open(path, "rb") as f:
        for line_no, obj in manifest_objects(f, path):
            sample = parse_row(obj, base_dir, line_no, path)
            if sample.id in seen:
                raise ManifestError(path, line_no, "id",
                                    f"duplicate id {sample.id!r} (first used on line {seen[sample.id]})")
            seen[sample.id] = line_no
            samples.append(sample)
    return samples


# ------------------------------------------------------------------------------------------------
# writing


def video_path_for_manifest(video: str | os.PathLike, manifest_dir: str | os.PathLike) -> str:
    """``video`` as it should be written into a manifest in ``manifest_dir``: relative (with ``/``)
    when the file lies under that folder, absolute otherwise."""
    video_abs = Path(os.path.abspath(video))
    folder = Path(os.path.abspath(manifest_dir))
    try:
        return video_abs.relative_to(folder).as_posix()
    except ValueError:
        return str(video_abs)


def write_manifest(path: str | os.PathLike, rows: Iterable[Mapping[str, Any] | Sample]) -> int:
    """Write rows (dicts, or Samples whose video is written relative to the manifest's folder when
    under it) as JSON Lines, UTF-8, ``ensure_ascii=False``. The file is replaced atomically (temp
    file in the same folder + ``os.replace``). Returns the number of rows written."""
    path = Path(path)
    folder = path.resolve().parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for row in rows:
                if isinstance(row, Sample):
                    row = row.to_dict(relative_to=folder)
                f.write(json.dumps(dict(row), ensure_ascii=False, allow_nan=False) + "\n")
                count += 1
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return count


_WS = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Strip and collapse internal whitespace (used by the dataset adapters)."""
    return _WS.sub(" ", text).strip()
