import json
import os

import pytest

from mirasol.data.manifest import (
    CAPTION_PROMPT,
    CLASSIFY_PROMPT,
    ManifestError,
    Sample,
    answer_text,
    exact_match,
    normalize_answer,
    prompt_for,
    prompt_text,
    read_manifest,
    write_manifest,
)


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def row(**kw):
    base = {"id": "s1", "video": "clips/a.mp4", "task": "qa", "question": "what color?", "answer": "red"}
    base.update(kw)
    return json.dumps({k: v for k, v in base.items() if v is not ...}, ensure_ascii=False)


def test_reads_design_example_and_resolves_paths(tmp_path):
    m = write_lines(tmp_path / "m.jsonl", [
        '{"id": "s1", "video": "clips/a.mp4", "start": 0.0, "end": 8.0, "task": "qa", '
        '"question": "what color is the square?", "answer": "red", "choices": ["red", "green"], '
        '"type": "color", "source": "synth"}',
        "",
        "   ",
        json.dumps({"id": "s2", "video": "/abs/b.mkv", "task": "caption", "caption": "a dog runs"}),
        json.dumps({"id": 7, "video": "c.mp4", "task": "classify", "label": "dog barking"}),
    ])
    s1, s2, s3 = read_manifest(m)
    assert isinstance(s1, Sample)
    assert s1.video == os.path.join(str(tmp_path), "clips", "a.mp4")
    assert (s1.start, s1.end, s1.task, s1.type) == (0.0, 8.0, "qa", "color")
    assert s1.choices == ["red", "green"] and s1.extra == {"source": "synth"}
    assert s1.line == 1 and s1.manifest == str(m)
    assert s2.video == "/abs/b.mkv" and s2.answer == "a dog runs" and s2.line == 4 and s2.extra == {}
    assert s3.id == "7" and s3.answer == "dog barking" and s3.start is None
    assert [prompt_text(s) for s in (s1, s2, s3)] == ["what color is the square?", CAPTION_PROMPT, CLASSIFY_PROMPT]
    assert answer_text(s2) == "a dog runs"


def test_task_inferred_and_defaults(tmp_path):
    m = write_lines(tmp_path / "m.jsonl", [json.dumps({"video": "a.mp4", "question": "q?", "answer": "x"}),
                                           json.dumps({"video": "a.mp4", "label": "cat"})])
    a, b = read_manifest(m)
    assert a.task == "qa" and a.id == "line1"
    assert b.task == "classify" and b.answer == "cat"


@pytest.mark.parametrize("line, key, fragment", [
    ("{not json", None, "not valid JSON"),
    ("[1, 2]", None, "JSON object"),
    (row(question=...), "question", "missing"),
    (row(answer=...), "answer", "missing"),
    (row(video=...), "video", "missing"),
    (row(answer=""), "answer", "empty"),
    (row(answer=3), "answer", "string"),
    (row(task="count"), "task", "one of"),
    (row(start=5, end=5), "end", "greater than start"),
    (row(start=-1), "start", ">= 0"),
    (row(end="8"), "end", "number"),
    (row(choices="red"), "choices", "list"),
    (row(choices=["red", 2]), "choices", "item 1"),
    (row(choices=["green", "blue"]), "answer", "not one of the choices"),
    (row(type=["a"]), "type", "string"),
    (json.dumps({"id": "c", "video": "a.mp4", "task": "caption"}), "answer", "caption"),
    (json.dumps({"id": "c", "video": "a.mp4", "task": "caption", "caption": "x", "answer": "y"}), "caption",
     "disagrees"),
    (json.dumps({"id": "c", "video": "a.mp4"}), "task", "missing"),
])
def test_errors_name_file_line_and_key(tmp_path, line, key, fragment):
    m = write_lines(tmp_path / "bad.jsonl", [row(id="ok"), "", line])
    with pytest.raises(ManifestError) as info:
        read_manifest(m)
    err = info.value
    assert err.line == 3 and err.key == key and err.path == str(m)
    msg = str(err)
    assert "bad.jsonl:3" in msg and fragment in msg
    assert key is None or f"'{key}'" in msg  # the key, where there is one, is named


def test_duplicate_ids(tmp_path):
    m = write_lines(tmp_path / "m.jsonl", [row(id="a"), row(id="b"), row(id="a")])
    with pytest.raises(ManifestError, match=r"m.jsonl:3: key 'id': duplicate id 'a' \(first used on line 1\)"):
        read_manifest(m)


def test_write_manifest_round_trip_and_atomic(tmp_path):
    out = tmp_path / "sub" / "out.jsonl"
    rows = [{"id": "ü1", "video": "v/1.mp4", "task": "qa", "question": "¿qué color? 日本", "answer": "rojo 🎉"},
            {"id": "2", "video": "v/2.mp4", "task": "caption", "answer": "x", "custom": {"k": 1}}]
    assert write_manifest(out, rows) == 2
    text = out.read_text(encoding="utf-8")
    assert "日本" in text and "\\u" not in text  # ensure_ascii=False
    samples = read_manifest(out)
    assert samples[0].question == "¿qué color? 日本" and samples[0].answer == "rojo 🎉"
    assert samples[1].extra == {"custom": {"k": 1}}
    assert [p.name for p in out.parent.iterdir()] == ["out.jsonl"]  # no temp file left behind
    # Samples are written back with video relative to the manifest's folder when under it.
    again = tmp_path / "sub" / "again.jsonl"
    write_manifest(again, samples)
    assert json.loads(again.read_text(encoding="utf-8").splitlines()[0])["video"] == "v/1.mp4"
    elsewhere = tmp_path / "other" / "m.jsonl"
    write_manifest(elsewhere, samples)
    first = json.loads(elsewhere.read_text(encoding="utf-8").splitlines()[0])
    assert first["video"] == str(tmp_path / "sub" / "v" / "1.mp4")
    assert [s.to_dict() for s in read_manifest(elsewhere)] == [s.to_dict() for s in samples]


def test_write_manifest_failure_keeps_old_file(tmp_path):
    out = tmp_path / "m.jsonl"
    write_manifest(out, [{"id": "a", "video": "a.mp4", "task": "classify", "answer": "x"}])
    with pytest.raises(ValueError):
        write_manifest(out, [{"id": "b", "video": "b.mp4", "task": "classify", "answer": float("nan")}])
    assert read_manifest(out)[0].id == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]


def test_prompt_for_matches_prompt_text():
    assert prompt_for("qa", "  what?  ") == "what?"
    assert prompt_for("caption") == CAPTION_PROMPT and prompt_for("classify") == CLASSIFY_PROMPT
    with pytest.raises(ValueError):
        prompt_for("qa", None)


@pytest.mark.parametrize("text, expected", [
    ("The Red Car!", "red car"),
    ("  a   dog,  an apple ", "dog apple"),
    ("T-shirt", "tshirt"),
    ("Ｔｗｏ", "two"),
    ("more than ten", "more than ten"),
    ("theater", "theater"),
    ("Café.", "café"),
    ("", ""),
])
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match():
    assert exact_match("The red.", "red") and not exact_match("red car", "red")
