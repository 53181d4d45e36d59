"""Dataset adapters: official annotation files (read unchanged) -> a manifest (docs/design.md).

    mirasol convert --format NAME --annotations F... --videos DIR --out M.jsonl

Formats and what each one writes (samples of every schema: shared/samples/annotations/):

``msrvtt-qa``  MSRVTT-QA ``train_qa.json`` / ``val_qa.json`` / ``test_qa.json``: a JSON list of
    ``{"answer", "category_id", "id", "question", "video_id"}`` with ``video_id`` an integer N whose
    video is ``videoN.mp4`` (a ``video_id`` that is already a string such as ``"video7010"`` is used
    as the name). No sample file is in shared/; the schema is as read by public MSRVTT-QA loaders.
    task ``qa``; ``type`` is the question word (what / who / how / when / where, else ``other``),
    the usual MSRVTT-QA breakdown. id: ``id``.
``activitynet-qa``  ActivityNet-QA ``*_q.json`` and ``*_a.json`` (pass both; which is which is
    told by their keys), joined on ``question_id``. Video ``v_<video_name>`` (.mp4 or .mkv; also
    found without the ``v_`` prefix). task ``qa``; ``type`` from the answer file's type code:
    0 motion, 1 spatial, 2 temporal, 3 yes_no, 4 color, 5 object, 6 location, 7 number, 8 other.
    id: ``question_id``.
``nextqa``  NExT-QA ``train.csv`` / ``val.csv`` / ``test.csv`` (header; ``a0``..``a4``; ``answer``
    is the index of the right choice) plus, optionally, ``map_vid_vidorID.json``; the video is
    looked for at ``<videos>/NExTVideo/<folder>/<id>.mp4`` or ``<videos>/<folder>/<id>.mp4`` (folder
    from the map) and else by name anywhere under ``--videos``. task ``qa`` with ``choices``;
    ``answer`` is the text of the right choice; ``type`` the question family code (CW, CH, TN, TC,
    TP, DL, DC, DO). id: ``<video>_<qid>``.
``music-avqa``  MUSIC-AVQA ``avqa-{train,val,test}.json``: a JSON list; the question is
    ``question_content`` with its ``<Object>``-style slots filled in order from ``templ_values``
    (a JSON-encoded list); the answer is under ``anser`` (sic; ``answer`` is accepted too);
    ``type`` (a JSON-encoded list like ``["Audio-Visual", "Counting"]``) becomes
    ``"Audio-Visual/Counting"``. Video ``<video_id>.mp4`` anywhere under ``--videos``. Rows flagged
    ``question_deleted`` are kept (the flag is copied as an extra key). id: ``question_id``.
``vggsound``  VGGSound CSV without header, either ``<youtube id>_<start>.mp4,<label>`` (the
    ``data/test.csv`` layout of the sample) or the full ``vggsound.csv`` layout
    ``<youtube id>,<start>,<label>,<split>`` (video ``<youtube id>_<start, 6 digits>.mp4``).
    task ``classify``, answer = label. id: the file name without extension.
``ave``  AVE ``Annotations.txt`` / ``trainSet.txt`` / ``valSet.txt`` / ``testSet.txt``: lines
    ``category&youtube id&quality&start&end`` (a header line is skipped). task ``classify``,
    answer = category, video ``<youtube id>.mp4``. AVE videos are 10 s clips and the label
    describes the whole clip, so the manifest's ``start``/``end`` are left out (the whole clip is
    used); the event window is kept as the extra keys ``event_start`` / ``event_end`` (seconds),
    with ``quality``. id: the YouTube id.

Common rules: videos are looked up under ``--videos`` trying ``.mp4 .mkv .webm .avi .mov`` (then
the other extensions of ``mirasol.choices.VIDEO_EXTENSIONS``) where the schema does not fix the extension (and, where it does, the others after it), then by file name
anywhere below that folder. Rows whose video is not found are counted and listed, not fatal.
Records that cannot make a valid manifest row (an empty answer, a choice index out of range, ...)
are skipped and counted by reason. Ids repeated across the input files get a ``-2``, ``-3``...
suffix. Video paths are written relative to the manifest's folder when the video is below it, and
absolute otherwise. A file that does not have the format's required keys is an error (probably the
wrong ``--format``).
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator

from mirasol.choices import CONVERT_FORMATS as FORMATS, VIDEO_EXTENSIONS
from mirasol.data.manifest import ManifestError, clean_text, parse_row, video_path_for_manifest, write_manifest
from mirasol.errors import MirasolError

VIDEO_EXTS = tuple("." + e for e in VIDEO_EXTENSIONS)  # as Path.suffix spells them
MAX_LISTED = 20  # missing videos / skipped records printed before "... and N more"

ACTIVITYNET_TYPES = {0: "motion", 1: "spatial", 2: "temporal", 3: "yes_no", 4: "color", 5: "object",
                     6: "location", 7: "number", 8: "other"}
MSRVTT_QUESTION_WORDS = ("what", "who", "how", "when", "where")
NEXTQA_FAMILIES = {"CW": "causal", "CH": "causal", "TN": "temporal", "TC": "temporal", "TP": "temporal",
                   "DL": "descriptive", "DC": "descriptive", "DO": "descriptive"}


class ConvertError(MirasolError, ValueError):
    """An annotation file cannot be read as the chosen format (the message names file and key)."""


@dataclass
class Record:
    """One sample read from the annotations: its manifest row without ``video``, and the video
    names to look for under ``--videos`` (relative paths, with or without extension), in order."""

    row: dict[str, Any]
    candidates: tuple[str, ...]
    where: str = ""  # "file:record" for messages


@dataclass
class ConvertStats:
    format: str
    annotations: list[str]
    out: str
    records: int = 0  # samples read from the annotation files
    written: int = 0  # manifest rows written
    missing: list[tuple[str, str]] = field(default_factory=list)  # (id, video looked for)
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    skipped_examples: list[str] = field(default_factory=list)  # first MAX_LISTED "where: reason"
    renamed_ids: int = 0  # repeated ids that got a suffix

    @property
    def missing_count(self) -> int:
        return len(self.missing)

    @property
    def skipped_count(self) -> int:
        return sum(self.skipped.values())

    def skip(self, reason: str, where: str = "") -> None:
        self.skipped[reason] += 1
        if len(self.skipped_examples) < MAX_LISTED:
            self.skipped_examples.append(f"{where}: {reason}" if where else reason)

    def summary(self) -> str:
        files = f"{len(self.annotations)} file" + ("s" if len(self.annotations) != 1 else "")
        text = (f"{self.format}: {self.records} records from {files}; {self.written} rows written"
                + (f" to {self.out}" if self.written else " (no manifest written)")
                + f"; {self.missing_count} without a video file; {self.skipped_count} skipped")
        if self.skipped:
            text += " (" + ", ".join(f"{reason}: {n}" for reason, n in self.skipped.most_common()) + ")"
        if self.renamed_ids:
            text += f"; {self.renamed_ids} repeated ids renamed"
        return text

    def report_problems(self, stream) -> None:
        """List missing videos and skipped records (first MAX_LISTED of each) on ``stream``."""
        if self.missing:
            print(f"{self.missing_count} rows have no video file (looked for under --videos):", file=stream)
            for sample_id, name in self.missing[:MAX_LISTED]:
                print(f"  {sample_id}: {name}", file=stream)
            if self.missing_count > MAX_LISTED:
                print(f"  ... and {self.missing_count - MAX_LISTED} more", file=stream)
        if self.skipped:
            print(f"{self.skipped_count} records skipped:", file=stream)
            for line in self.skipped_examples:
                print(f"  {line}", file=stream)
            if self.skipped_count > len(self.skipped_examples):
                print(f"  ... and {self.skipped_count - len(self.skipped_examples)} more", file=stream)


# ------------------------------------------------------------------------------------------------
# finding videos


class VideoFinder:
    """Looks up video files below a folder: first at the candidate paths (trying the video
    extensions), then by file name anywhere below the folder (an index built on first need)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._index: dict[str, list[Path]] | None = None

    @staticmethod
    def _split(candidate: str) -> tuple[str, tuple[str, ...]]:
        """(path without a video extension, extensions to try in order)."""
        path = PurePosixPath(candidate)
        suffix = path.suffix.lower()
        if suffix in VIDEO_EXTS:
            stem = str(path)[: -len(path.suffix)]
            return stem, (path.suffix,) + tuple(e for e in VIDEO_EXTS if e != suffix)
        return str(path), VIDEO_EXTS

    def _build_index(self) -> dict[str, list[Path]]:
        index: dict[str, list[Path]] = {}
        for folder, dirs, files in os.walk(self.root, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in files:
                stem, ext = os.path.splitext(name)
                if ext.lower() in VIDEO_EXTS and not name.startswith("."):
                    index.setdefault(stem, []).append(Path(folder) / name)
        for stem, paths in index.items():
            paths.sort(key=lambda p: (VIDEO_EXTS.index(p.suffix.lower()), len(p.parts), str(p)))
        return index

    def find(self, candidates: Iterable[str]) -> Path | None:
        candidates = list(candidates)
        for candidate in candidates:
            stem, exts = self._split(candidate)
            for ext in exts:
                path = self.root / (stem + ext)
                if path.is_file():
                    return path
        if self._index is None:
            self._index = self._build_index()
        for candidate in candidates:
            stem, _ = self._split(candidate)
            hits = self._index.get(PurePosixPath(stem).name)
            if hits:
                return hits[0]
        return None


# ------------------------------------------------------------------------------------------------
# helpers for the readers


def _row(id: str, task: str, answer: Any, question: Any = None, choices: list[str] | None = None,
         type: str | None = None, **extra: Any) -> dict[str, Any]:
    """A manifest row (without ``video``) in the canonical key order."""
    row: dict[str, Any] = {"id": str(id), "task": task}
    if question is not None:
        row["question"] = clean_text(question) if isinstance(question, str) else question
    row["answer"] = clean_text(answer) if isinstance(answer, str) else answer
    if choices is not None:
        row["choices"] = choices
    if type is not None:
        row["type"] = type
    row.update({k: v for k, v in extra.items() if v is not None})
    return row


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConvertError(f"{path}: not valid JSON ({e.msg}, line {e.lineno} column {e.colno})") from None
    except UnicodeDecodeError as e:
        raise ConvertError(f"{path}: not UTF-8 text ({e.reason})") from None


def _load_json_list(path: Path, fmt: str) -> list[Any]:
    data = _load_json(path)
    if not isinstance(data, list):
        raise ConvertError(f"{path}: expected a JSON list of records for {fmt}, got a {type(data).__name__}")
    return data


def _require(record: Any, keys: Iterable[str], path: Path, index: int, fmt: str) -> None:
    if not isinstance(record, dict):
        raise ConvertError(f"{path}: record {index}: expected a JSON object, got {type(record).__name__}")
    for key in keys:
        if key not in record:
            raise ConvertError(f"{path}: record {index}: missing key '{key}' (is this a {fmt} file?)")


def _json_list_field(value: Any) -> list[Any] | None:
    """MUSIC-AVQA stores lists as JSON-encoded strings; accept a real list too."""
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return None
        return parsed if isinstance(parsed, list) else None
    return None


def _number(text: str) -> int | float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return int(value) if value.is_integer() else value


# ------------------------------------------------------------------------------------------------
# readers: (annotation paths, stats) -> Records


def read_msrvtt_qa(paths: list[Path], stats: ConvertStats) -> Iterator[Record]:
    for path in paths:
        for i, rec in enumerate(_load_json_list(path, "msrvtt-qa")):
            _require(rec, ("question", "answer", "video_id"), path, i, "msrvtt-qa")
            video_id = rec["video_id"]
            if isinstance(video_id, str) and video_id.startswith("video"):
                name = video_id
            else:
                name = f"video{video_id}"
            question = rec["question"]
            first = question.strip().split(" ", 1)[0].lower() if isinstance(question, str) else ""
            qtype = first if first in MSRVTT_QUESTION_WORDS else "other"
            sample_id = rec.get("id", f"{name}_{i}")
            row = _row(sample_id, "qa", rec["answer"], question=question, type=qtype, video_id=video_id,
                       category_id=rec.get("category_id"))
            yield Record(row, (f"{name}.mp4",), f"{path.name}:{i}")


def read_activitynet_qa(paths: list[Path], stats: ConvertStats) -> Iterator[Record]:
    questions: dict[str, tuple[dict, str]] = {}
    answers: dict[str, dict] = {}
    q_files = a_files = 0
    for path in paths:
        data = _load_json_list(path, "activitynet-qa")
        if not data:
            continue
        first = data[0] if isinstance(data[0], dict) else {}
        is_q, is_a = "question" in first, "answer" in first
        if not (is_q or is_a):
            raise ConvertError(f"{path}: record 0: has neither 'question' nor 'answer' "
                               "(expected an ActivityNet-QA *_q.json or *_a.json file)")
        q_files += is_q
        a_files += is_a
        for i, rec in enumerate(data):
            if is_q:
                _require(rec, ("question_id", "question", "video_name"), path, i, "activitynet-qa *_q.json")
                questions.setdefault(str(rec["question_id"]), (rec, f"{path.name}:{i}"))
            if is_a:
                _require(rec, ("question_id", "answer"), path, i, "activitynet-qa *_a.json")
                answers.setdefault(str(rec["question_id"]), rec)
    if not q_files or not a_files:
        missing = "questions (*_q.json)" if not q_files else "answers (*_a.json)"
        raise ConvertError(f"activitynet-qa needs both the *_q.json and *_a.json files; no {missing} file given")
    for qid, (q, where) in questions.items():
        a = answers.get(qid)
        if a is None:
            stats.skip("question without an answer", f"{where} ({qid})")
            continue
        code = a.get("type")
        qtype = ACTIVITYNET_TYPES.get(code, None if code is None else str(code))
        name = str(q["video_name"])
        row = _row(qid, "qa", a["answer"], question=q["question"], type=qtype, video_name=name, type_code=code)
        yield Record(row, (f"v_{name}", name), where)
    for qid in answers.keys() - questions.keys():
        stats.skip("answer without a question", qid)


def read_nextqa(paths: list[Path], stats: ConvertStats) -> Iterator[Record]:
    folders: dict[str, str] = {}
    csv_paths = []
    for path in paths:
        if path.suffix.lower() == ".json":
            data = _load_json(path)
            if not isinstance(data, dict):
                raise ConvertError(f"{path}: expected the NExT-QA map_vid_vidorID.json (an object "
                                   f"video -> '<folder>/<id>'), got a {type(data).__name__}")
            folders.update({str(k): str(v) for k, v in data.items()})
        else:
            csv_paths.append(path)
    if not csv_paths:
        raise ConvertError("nextqa needs a question file (train.csv, val.csv or test.csv)")
    required = ("video", "question", "answer", "a0", "a1", "a2", "a3", "a4")
    for path in csv_paths:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            for key in required:
                if key not in header:
                    raise ConvertError(f"{path}: header has no column '{key}' (is this a NExT-QA csv? "
                                       f"header: {','.join(header)})")
            for rec in reader:
                where = f"{path.name}:{reader.line_num}"
                video = (rec["video"] or "").strip()
                qid = (rec.get("qid") or "").strip()
                choices = [clean_text(rec[f"a{i}"] or "") for i in range(5)]
                index = _number((rec["answer"] or "").strip())
                if not isinstance(index, int) or not 0 <= index < len(choices):
                    stats.skip("answer is not a choice index 0-4", f"{where} ({rec['answer']!r})")
                    continue
                qtype = (rec.get("type") or "").strip() or None
                row = _row(f"{video}_{qid or reader.line_num}", "qa", choices[index], question=rec["question"],
                           choices=choices, type=qtype, video_id=video, qid=_number(qid) if qid else None,
                           answer_index=index, family=NEXTQA_FAMILIES.get(qtype or ""))
                mapped = folders.get(video)
                candidates = (f"NExTVideo/{mapped}.mp4", f"{mapped}.mp4") if mapped else (f"{video}.mp4",)
                yield Record(row, candidates, where)


_SLOT = re.compile(r"<[^<>\s][^<>]*>")


def fill_template(template: str, values: list[Any]) -> str | None:
    """Fill ``<Slot>`` markers in order from ``values``; None when there are fewer values than slots."""
    slots = _SLOT.findall(template)
    if len(values) < len(slots):
        return None
    it = iter(values)
    return _SLOT.sub(lambda m: str(next(it)), template)


def read_music_avqa(paths: list[Path], stats: ConvertStats) -> Iterator[Record]:
    for path in paths:
        for i, rec in enumerate(_load_json_list(path, "music-avqa")):
            _require(rec, ("video_id", "question_content"), path, i, "music-avqa")
            where = f"{path.name}:{i}"
            if "anser" in rec:
                answer = rec["anser"]
            elif "answer" in rec:
                answer = rec["answer"]
            else:
                raise ConvertError(f"{path}: record {i}: missing key 'anser' (the MUSIC-AVQA answer; "
                                   "is this a music-avqa file?)")
            values = _json_list_field(rec.get("templ_values", "[]"))
            if values is None:
                stats.skip("templ_values is not a JSON list", where)
                continue
            question = fill_template(str(rec["question_content"]), values)
            if question is None:
                stats.skip("fewer templ_values than question slots", where)
                continue
            type_list = _json_list_field(rec.get("type"))
            qtype = "/".join(str(t) for t in type_list) if type_list else (
                rec["type"] if isinstance(rec.get("type"), str) and rec["type"] else None)
            video_id = str(rec["video_id"])
            sample_id = rec.get("question_id", f"{video_id}_{i}")
            row = _row(sample_id, "qa", answer, question=question, type=qtype, video_id=video_id,
                       question_deleted=rec.get("question_deleted"))
            yield Record(row, (f"{video_id}.mp4",), where)


def read_vggsound(paths: list[Path], stats: ConvertStats) -> Iterator[Record]:
    for path in paths:
        recognised = 0
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            for fields in reader:
                where = f"{path.name}:{reader.line_num}"
                fields = [x.strip() for x in fields]
                if not any(fields):
                    continue
                split = None
                if len(fields) >= 2 and fields[0].lower().endswith(VIDEO_EXTS):
                    # data/{train,test}.csv: <ytid>_<start>.mp4,<label>
                    filename, label = fields[0], ",".join(fields[1:]).strip()
                elif len(fields) in (3, 4) and fields[1].isdigit():
                    # vggsound.csv: <ytid>,<start>,<label>[,<split>]
                    filename, label = f"{fields[0]}_{int(fields[1]):06d}.mp4", fields[2]
                    split = fields[3] if len(fields) == 4 else None
                else:
                    stats.skip("not a VGGSound row", where)
                    continue
                recognised += 1
                stem = PurePosixPath(filename).stem
                ytid, _, start = stem.rpartition("_")
                if not (ytid and start.isdigit()):
                    ytid, start = None, None
                row = _row(stem, "classify", label, youtube_id=ytid,
                           youtube_start=int(start) if start else None, split=split)
                yield Record(row, (filename,), where)
        if not recognised:
            raise ConvertError(f"{path}: no VGGSound rows ('<youtube id>_<start>.mp4,<label>' or "
                               "'<youtube id>,<start>,<label>,<split>'); is this a vggsound file?")


def read_ave(paths: list[Path], stats: ConvertStats) -> Iterator[Record]:
    for path in paths:
        recognised = 0
        with open(path, encoding="utf-8-sig") as f:
            for line_no, line in enumerate(f, start=1):
                line = line.strip()
                if not line:
                    continue
                where = f"{path.name}:{line_no}"
                fields = [x.strip() for x in line.split("&")]
                if len(fields) != 5:
                    stats.skip("not 5 '&'-separated fields", where)
                    continue
                category, ytid, quality, start_s, end_s = fields
                start, end = _number(start_s), _number(end_s)
                if start is None or end is None:
                    if line_no == 1:  # the header: Category&VideoID&Quality&StartTime&EndTime
                        continue
                    stats.skip("event start/end are not numbers", where)
                    continue
                recognised += 1
                row = _row(ytid, "classify", category, youtube_id=ytid, quality=quality or None,
                           event_start=start, event_end=end)
                yield Record(row, (f"{ytid}.mp4",), where)
        if not recognised:
            raise ConvertError(f"{path}: no AVE rows ('category&youtube id&quality&start&end'); "
                               "is this an ave file?")


READERS: dict[str, Callable[[list[Path], ConvertStats], Iterator[Record]]] = {
    "msrvtt-qa": read_msrvtt_qa,
    "activitynet-qa": read_activitynet_qa,
    "nextqa": read_nextqa,
    "music-avqa": read_music_avqa,
    "vggsound": read_vggsound,
    "ave": read_ave,
}


# ------------------------------------------------------------------------------------------------
# driver


def convert(format: str, annotation_paths: Iterable[str | os.PathLike], videos_dir: str | os.PathLike,
            out_path: str | os.PathLike, *, verbose: bool = False) -> ConvertStats:
    """Convert official annotation files into a manifest at ``out_path``.

    Returns the counts; writes the manifest only if at least one row has a video. With
    ``verbose``, missing videos and skipped records are listed on stderr.
    """
    fmt = format.strip().lower().replace("_", "-")
    if fmt not in READERS:
        raise ConvertError(f"unknown format {format!r} (choose from {', '.join(FORMATS)})")
    paths = [Path(p) for p in annotation_paths]
    if not paths:
        raise ConvertError("no annotation files given")
    for path in paths:
        if not path.is_file():
            raise ConvertError(f"annotation file not found: {path}")
    videos = Path(videos_dir)
    if not videos.is_dir():
        raise ConvertError(f"videos folder not found: {videos}")
    out = Path(out_path)
    if out.is_dir():
        raise ConvertError(f"--out must be a file (the manifest), not a folder: {out}")
    out_dir = Path(os.path.abspath(out)).parent

    stats = ConvertStats(format=fmt, annotations=[str(p) for p in paths], out=str(out))
    finder = VideoFinder(videos)
    rows: list[dict[str, Any]] = []
    ids: dict[str, int] = {}
    for record in READERS[fmt](paths, stats):
        stats.records += 1
        # Validate with the manifest's own rules before looking for the video.
        try:
            parse_row({**record.row, "video": record.candidates[0]}, out_dir)
        except ManifestError as e:
            stats.skip(f"{e.key}: {e.reason}" if e.key else e.reason, record.where)
            continue
        video = finder.find(record.candidates)
        if video is None:
            first = record.candidates[0]
            shown = first if PurePosixPath(first).suffix.lower() in VIDEO_EXTS else first + ".*"
            stats.missing.append((record.row["id"], shown))
            continue
        row = dict(record.row)
        base_id = row["id"]
        if base_id in ids:
            ids[base_id] += 1
            new_id = f"{base_id}-{ids[base_id]}"
            while new_id in ids:
                ids[base_id] += 1
                new_id = f"{base_id}-{ids[base_id]}"
            ids[new_id] = 1
            row["id"] = new_id
            stats.renamed_ids += 1
        else:
            ids[base_id] = 1
        row = {"id": row.pop("id"), "video": video_path_for_manifest(video, out_dir), **row}
        rows.append(row)
    if rows:
        write_manifest(out, rows)
    stats.written = len(rows)
    if verbose:
        stats.report_problems(sys.stderr)
    return stats
