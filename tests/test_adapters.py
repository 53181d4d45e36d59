"""Dataset adapters (`mirasol convert`) on annotation files of each official format: small synthetic
records written here after the schemas of the real files (media_fixtures.samples_dir(), when
MIRASOL_SAMPLES names them, adds the real files to the whole-file checks at the end)."""

import json
from argparse import Namespace
from pathlib import Path

import pytest

from mirasol.cli import build_parser, cmd_convert, main
from mirasol.corpora.adapters import ConvertError, convert, fill_template
from mirasol.data.manifest import read_manifest

import media_fixtures


def write_json(path: Path, value) -> Path:
    path.write_text(json.dumps(value, indent=1), encoding="utf-8")
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def music_avqa_record(qid: int, video: str, kind: list[str], question: str, values: list[str], answer: str,
                      deleted: int = 0) -> dict:
    """One record of avqa-{train,val,test}.json: `type` and `templ_values` are JSON-encoded lists,
    and the answer's key is spelled `anser`."""
    return {"video_id": video, "question_id": qid, "type": json.dumps(kind), "question_content": question,
            "templ_values": json.dumps(values), "question_deleted": deleted, "anser": answer}


@pytest.fixture(scope="module")
def ann(tmp_path_factory) -> dict[str, Path]:
    """One small annotation file (two for ActivityNet-QA, NExT-QA's with its map) per format."""
    d = tmp_path_factory.mktemp("annotations")
    files = {}
    files["music-avqa"] = write_json(d / "avqa-val.json", [
        music_avqa_record(3001, "00012001", ["Audio", "Counting"], "How many instruments are heard?", [], "three"),
        music_avqa_record(3002, "00012002", ["Visual", "Location"], "Where is the performance?", [], "indoor"),
        music_avqa_record(3003, "00012003", ["Audio-Visual", "Temporal"], "Is the <Object> on the <LR> louder\uff1f",
                          ["cello", "left"], "yes", deleted=1),
        music_avqa_record(3004, "00012004", ["Visual", "Counting"], "How many <Object> are there?", ["drum"], "two"),
        music_avqa_record(3005, "00012005", ["Audio", "Comparative"], "Is the sound louder at the end?", [], "no"),
    ])
    anet = [("aB3_xY9kLm0", 1, "is the man wearing a hat", "yes", 3), ("Qr7-Zt2WnPc", 4, "what color is the car", "red", 4),
            ("mN0_pQ8rSt1", 2, "how many dogs are there", "two", 7), ("zZ9-yY8xX7w", 0, "what is the girl doing", "dancing", 0),
            ("cD4_eF5gH6i", 3, "is it raining", "no", 3)]
    files["activitynet-qa-q"] = write_json(d / "val_q.json", [
        {"video_name": v, "question": q, "question_id": f"v_{v}_{n}"} for v, n, q, _, _ in anet])
    files["activitynet-qa-a"] = write_json(d / "val_a.json", [
        {"answer": a, "type": t, "question_id": f"v_{v}_{n}"} for v, n, _, a, t in anet])
    header = "video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4"
    files["nextqa"] = write_lines(d / "val.csv", [
        header,
        "5000000001,300,640,360,why does the boy raise his hand,2,0,CW,to wave,to jump,to ask a question,to eat,to sleep",
        "5000000002,450,640,480,what does the cat do after jumping,0,4,TN,lands on the sofa,runs away,sleeps,eats,meows",
        "5000000003,210,480,360,how many people are in the room,1,2,DC,one,two,three,four,five",
        "5000000004,600,640,360,what happens before the woman sits,3,1,TP,she sings,she runs,she cries,she stands up,she reads",
        "5000000005,330,640,360,where are the children,4,7,DL,kitchen,garden,beach,park,classroom",
    ])
    files["nextqa-map"] = write_json(d / "map_vid_vidorID.json", {
        "5000000001": "0101/5000000001", "5000000002": "0102/5000000002", "5000000003": "0103/5000000003",
        "5000000004": "0104/5000000004", "5000000005": "1202/5000000005"})
    files["vggsound"] = write_lines(d / "test.csv", [
        "Ab1Cd2Ef3Gh_000012.mp4,dog barking", "Ij4Kl5Mn6Op_000040.mp4,church bell ringing",
        "Qr7St8Uv9Wx_000101.mp4,playing violin", "Yz0Ab1Cd2Ef_000007.mp4,car engine starting",
        "Gh3Ij4Kl5Mn_000230.mp4,rain on surface"])
    files["ave"] = write_lines(d / "Annotations.txt", [
        "Category&VideoID&Quality&StartTime&EndTime",  # the official file starts with a header line
        "Acoustic guitar&aAa1bBb2cCc&good&0&10", "Helicopter&dDd3eEe4fFf&good&3&9", "Helicopter&gGg5hHh6iIi&good&0&4",
        "Rodent&jJj7kKk8lLl&bad&2&10", "Rodent&mMm9nNn0oOo&good&5&10", "Truck&pPp1qQq2rRr&good&0&10"])
    return files


def touch(folder: Path, *names: str) -> None:
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def by_id(manifest: Path) -> dict:
    return {s.id: s for s in read_manifest(manifest)}


def raw_rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]


def test_music_avqa(tmp_path, ann):
    videos = tmp_path / "videos"
    touch(videos, "MUSIC-AVQA-videos-Real/00012003.mp4", "00012001.mp4")
    out = tmp_path / "m.jsonl"
    stats = convert("music-avqa", [ann["music-avqa"]], videos, out)
    assert (stats.records, stats.written, stats.missing_count, stats.skipped_count) == (5, 2, 3, 0)
    assert {i for i, _ in stats.missing} == {"3002", "3004", "3005"}
    rows = by_id(out)
    slot = rows["3003"]
    assert slot.question == "Is the cello on the left louder\uff1f"  # <Object>, <LR> filled in order
    assert slot.answer == "yes"  # from the `anser` key
    assert slot.type == "Audio-Visual/Temporal" and slot.task == "qa"
    assert slot.video == str(videos / "MUSIC-AVQA-videos-Real" / "00012003.mp4")  # found in a subfolder
    assert slot.extra["video_id"] == "00012003" and slot.extra["question_deleted"] == 1  # kept, flag copied
    plain = rows["3001"]
    assert plain.question == "How many instruments are heard?" and plain.answer == "three"
    assert plain.type == "Audio/Counting" and plain.extra["question_deleted"] == 0
    # relative video paths: the manifest is in tmp_path, the videos below it
    assert {r["video"] for r in raw_rows(out)} == {"videos/MUSIC-AVQA-videos-Real/00012003.mp4", "videos/00012001.mp4"}


def test_fill_template():
    assert fill_template("Is the <Object> on the <LR> louder?", ["piano", "left"]) == "Is the piano on the left louder?"
    assert fill_template("no slots", ["extra"]) == "no slots"
    assert fill_template("<Object> and <Object>", ["a"]) is None


def test_activitynet_qa_join(tmp_path, ann):
    videos = tmp_path / "videos"
    touch(videos, "v_aB3_xY9kLm0.mkv", "Qr7-Zt2WnPc.mp4")  # with and without the v_ prefix
    out = tmp_path / "anet.jsonl"
    # answers file first: which is which is told by content, not by order
    stats = convert("activitynet-qa", [ann["activitynet-qa-a"], ann["activitynet-qa-q"]], videos, out)
    assert (stats.records, stats.written, stats.missing_count) == (5, 2, 3)
    rows = by_id(out)
    a = rows["v_aB3_xY9kLm0_1"]
    assert (a.question, a.answer, a.type) == ("is the man wearing a hat", "yes", "yes_no")
    assert a.video.endswith("v_aB3_xY9kLm0.mkv") and a.extra["type_code"] == 3
    b = rows["v_Qr7-Zt2WnPc_4"]
    assert (b.question, b.answer, b.type) == ("what color is the car", "red", "color")
    assert b.video.endswith("Qr7-Zt2WnPc.mp4")
    missing = dict(stats.missing)
    assert missing["v_mN0_pQ8rSt1_2"] == "v_mN0_pQ8rSt1.*"


def test_activitynet_qa_needs_both_files(tmp_path, ann):
    with pytest.raises(ConvertError, match="answers"):
        convert("activitynet-qa", [ann["activitynet-qa-q"]], tmp_path, tmp_path / "o.jsonl")


def test_nextqa_multiple_choice(tmp_path, ann):
    videos = tmp_path / "videos"
    touch(videos, "NExTVideo/0101/5000000001.mp4", "1202/5000000005.mp4", "elsewhere/5000000004.mp4")
    out = tmp_path / "next.jsonl"
    stats = convert("nextqa", [ann["nextqa"], ann["nextqa-map"]], videos, out)
    assert (stats.records, stats.written, stats.missing_count) == (5, 3, 2)
    rows = by_id(out)
    a = rows["5000000001_0"]
    assert a.question == "why does the boy raise his hand"
    assert a.choices == ["to wave", "to jump", "to ask a question", "to eat", "to sleep"]
    assert a.answer == "to ask a question"  # index 2
    assert a.type == "CW" and a.extra["family"] == "causal" and a.extra["answer_index"] == 2
    assert a.video == str(videos / "NExTVideo" / "0101" / "5000000001.mp4")
    c = rows["5000000005_7"]
    assert (c.question, c.answer, c.type) == ("where are the children", "classroom", "DL")
    assert c.video == str(videos / "1202" / "5000000005.mp4")
    d = rows["5000000004_1"]  # not where the map says: found by name
    assert d.answer == "she stands up" and d.type == "TP" and d.extra["family"] == "temporal"
    assert d.video == str(videos / "elsewhere" / "5000000004.mp4")
    assert dict(stats.missing)["5000000002_4"] == "NExTVideo/0102/5000000002.mp4"


def test_nextqa_without_map(tmp_path, ann):
    touch(tmp_path / "v", "5000000001.webm")
    stats = convert("nextqa", [ann["nextqa"]], tmp_path / "v", tmp_path / "n.jsonl")
    assert stats.written == 1
    assert by_id(tmp_path / "n.jsonl")["5000000001_0"].video.endswith("5000000001.webm")


def test_vggsound(tmp_path, ann):
    videos = tmp_path / "videos"
    touch(videos, "Ab1Cd2Ef3Gh_000012.mp4", "Gh3Ij4Kl5Mn_000230.mkv")  # another extension is found too
    out = tmp_path / "vgg.jsonl"
    stats = convert("vggsound", [ann["vggsound"]], videos, out)
    assert (stats.records, stats.written, stats.missing_count) == (5, 2, 3)
    rows = by_id(out)
    a = rows["Ab1Cd2Ef3Gh_000012"]
    assert (a.task, a.answer, a.question, a.start, a.end) == ("classify", "dog barking", None, None, None)
    assert a.extra == {"youtube_id": "Ab1Cd2Ef3Gh", "youtube_start": 12}
    assert rows["Gh3Ij4Kl5Mn_000230"].answer == "rain on surface"


def test_vggsound_full_csv_layout(tmp_path):
    ann = tmp_path / "vggsound.csv"
    ann.write_text('---g-f_I2yQ,1,"people marching",test\n--0PQM4-hqg,30,waterfall burbling,train\n',
                   encoding="utf-8")
    touch(tmp_path / "v", "---g-f_I2yQ_000001.mp4", "--0PQM4-hqg_000030.mp4")
    stats = convert("vggsound", [ann], tmp_path / "v", tmp_path / "o.jsonl")
    assert stats.written == 2
    rows = by_id(tmp_path / "o.jsonl")
    assert rows["---g-f_I2yQ_000001"].answer == "people marching"
    assert rows["--0PQM4-hqg_000030"].extra["split"] == "train"


def test_ave(tmp_path, ann):
    videos = tmp_path / "videos"
    touch(videos, "AVE/aAa1bBb2cCc.mp4", "AVE/dDd3eEe4fFf.mp4")
    out = tmp_path / "ave.jsonl"
    stats = convert("ave", [ann["ave"]], videos, out)
    assert (stats.records, stats.written, stats.missing_count, stats.skipped_count) == (6, 2, 4, 0)
    rows = by_id(out)
    guitar = rows["aAa1bBb2cCc"]
    assert (guitar.task, guitar.answer, guitar.start, guitar.end) == ("classify", "Acoustic guitar", None, None)
    assert guitar.extra["event_start"] == 0 and guitar.extra["event_end"] == 10 and guitar.extra["quality"] == "good"
    heli = rows["dDd3eEe4fFf"]
    assert heli.answer == "Helicopter" and (heli.extra["event_start"], heli.extra["event_end"]) == (3, 9)


def test_msrvtt_qa(tmp_path):
    # records written after the official schema (as public MSRVTT-QA loaders read it)
    ann = tmp_path / "test_qa.json"
    ann.write_text(json.dumps([
        {"answer": "animation", "category_id": 3, "id": 158581, "question": "what is a cartoon doing?",
         "video_id": 7010},
        {"answer": "man", "category_id": 3, "id": 158582, "question": "who is talking?", "video_id": 7010},
        {"answer": "two", "category_id": 9, "id": 158583, "question": "how many people sing?", "video_id": 7011},
        {"answer": "", "category_id": 9, "id": 158584, "question": "what is empty?", "video_id": 7010},
    ]), encoding="utf-8")
    videos = tmp_path / "outside"  # manifest elsewhere: absolute paths
    touch(videos, "video7010.mp4")
    out = tmp_path / "manifests" / "msrvtt.jsonl"
    stats = convert("msrvtt-qa", [ann], videos, out)
    assert (stats.records, stats.written, stats.missing_count, stats.skipped_count) == (4, 2, 1, 1)
    assert "answer: is empty" in stats.skipped
    rows = by_id(out)
    assert rows["158581"].answer == "animation" and rows["158581"].type == "what"
    assert rows["158582"].type == "who" and rows["158582"].extra["category_id"] == 3
    assert raw_rows(out)[0]["video"] == str(videos / "video7010.mp4")
    assert dict(stats.missing)["158583"] == "video7011.mp4"


def test_repeated_ids_renamed(tmp_path, ann):
    touch(tmp_path / "v", "00012004.mp4")
    sample = ann["music-avqa"]
    stats = convert("music-avqa", [sample, sample], tmp_path / "v", tmp_path / "o.jsonl")
    assert stats.written == 2 and stats.renamed_ids == 1
    assert set(by_id(tmp_path / "o.jsonl")) == {"3004", "3004-2"}


def test_wrong_format_is_an_error(tmp_path, ann):
    with pytest.raises(ConvertError, match="val_q.json: record 0: missing key 'video_id'"):
        convert("music-avqa", [ann["activitynet-qa-q"]], tmp_path, tmp_path / "o.jsonl")
    with pytest.raises(ConvertError, match="header has no column 'video'"):
        convert("nextqa", [ann["vggsound"]], tmp_path, tmp_path / "o.jsonl")
    with pytest.raises(ConvertError, match="not found"):
        convert("ave", [tmp_path / "nope.txt"], tmp_path, tmp_path / "o.jsonl")


def test_cli_convert(tmp_path, capsys, ann):
    videos = tmp_path / "videos"
    touch(videos, "Ab1Cd2Ef3Gh_000012.mp4")
    out = tmp_path / "o.jsonl"
    args = build_parser().parse_args(["convert", "--format", "vggsound", "--annotations",
                                      str(ann["vggsound"]), "--videos", str(videos), "--out", str(out)])
    assert cmd_convert(args) == 0
    captured = capsys.readouterr()
    assert "1 rows written" in captured.out and "4 without a video file" in captured.out
    assert "4 rows have no video file" in captured.err and "Ij4Kl5Mn6Op_000040" in captured.err
    assert len(read_manifest(out)) == 1

    # nothing found: exit 1 and no manifest
    empty_out = tmp_path / "none.jsonl"
    args = Namespace(format="vggsound", annotations=[str(ann["vggsound"])],
                     videos=str(tmp_path / "empty"), out=str(empty_out))
    (tmp_path / "empty").mkdir()
    assert cmd_convert(args) == 1
    assert not empty_out.exists()
    # an input error goes to `mirasol.cli.main`, which prints one line and exits with 2
    args.videos = str(tmp_path / "does-not-exist")
    with pytest.raises(ConvertError, match="videos folder not found"):
        cmd_convert(args)
    capsys.readouterr()
    assert main(["convert", "--format", "vggsound", "--annotations", str(ann["vggsound"]),
                 "--videos", args.videos, "--out", str(empty_out)]) == 2
    assert "mirasol convert: error: videos folder not found" in capsys.readouterr().err


def test_missing_list_is_capped(tmp_path, capsys):
    ann = tmp_path / "many.csv"
    ann.write_text("".join(f"vid{i:03d}_000000.mp4,label {i % 3}\n" for i in range(30)), encoding="utf-8")
    touch(tmp_path / "v", "vid000_000000.mp4")
    args = Namespace(format="vggsound", annotations=[str(ann)], videos=str(tmp_path / "v"),
                     out=str(tmp_path / "o.jsonl"))
    assert cmd_convert(args) == 0
    err = capsys.readouterr().err
    assert "29 rows have no video file" in err and "... and 9 more" in err


# ---------------------------------------------------------------------------------------------
# Whole files: with every video in place, every record becomes a row. On the synthetic files, and
# on the real ones where MIRASOL_SAMPLES names them.

REAL_FILES = {"music-avqa": ["music-avqa-sample.json"],
              "activitynet-qa": ["activitynet-qa-sample_q.json", "activitynet-qa-sample_a.json"],
              "nextqa": ["nextqa-sample.csv", "nextqa-sample-map_vid_vidorID.json"],
              "vggsound": ["vggsound-sample.csv"], "ave": ["ave-sample.txt"]}
SYNTHETIC_FILES = {"music-avqa": ["music-avqa"], "activitynet-qa": ["activitynet-qa-q", "activitynet-qa-a"],
                   "nextqa": ["nextqa", "nextqa-map"], "vggsound": ["vggsound"], "ave": ["ave"]}


@pytest.fixture(params=media_fixtures.sources())
def annotation_files(request, ann) -> dict[str, list[Path]]:
    if request.param == "generated":
        return {fmt: [ann[key] for key in keys] for fmt, keys in SYNTHETIC_FILES.items()}
    folder = media_fixtures.samples_dir() / "annotations"
    return {fmt: [folder / name for name in names] for fmt, names in REAL_FILES.items()}


@pytest.mark.parametrize("fmt", sorted(REAL_FILES))
def test_every_record_becomes_a_row_when_its_video_is_there(tmp_path, annotation_files, fmt):
    files, videos = annotation_files[fmt], tmp_path / "videos"
    videos.mkdir()
    first = convert(fmt, files, videos, tmp_path / "none.jsonl")
    assert first.written == 0 and first.missing_count == first.records > 0 and first.skipped_count == 0
    touch(videos, *(where.replace(".*", ".mp4") for _, where in first.missing))  # where each video is looked for
    stats = convert(fmt, files, videos, tmp_path / "all.jsonl")
    assert (stats.written, stats.missing_count, stats.skipped_count) == (stats.records, 0, 0)
    rows = read_manifest(tmp_path / "all.jsonl")
    assert sorted(r.id for r in rows) == sorted(i for i, _ in first.missing)
    assert all(r.answer and Path(r.video).exists() for r in rows)
