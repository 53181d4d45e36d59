import json
from argparse import Namespace
from pathlib import Path

import pytest

from mirasol.cli import build_parser, cmd_convert, main
from mirasol.corpora.adapters import ConvertError, convert, fill_template
from mirasol.data.manifest import read_manifest

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "annotations"

pytestmark = pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"annotation samples not found at {SAMPLES}")


def touch(folder: Path, *names: str) -> None:
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def by_id(manifest: Path) -> dict:
    return {s.id: s for s in read_manifest(manifest)}


def raw_rows(manifest: Path) -> list[dict]:
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]


def test_music_avqa(tmp_path):
    videos = tmp_path / "videos"
    touch(videos, "MUSIC-AVQA-videos-Real/00000729.mp4", "00005247.mp4")
    out = tmp_path / "m.jsonl"
    stats = convert("music-avqa", [SAMPLES / "music-avqa-sample.json"], videos, out)
    assert (stats.records, stats.written, stats.missing_count, stats.skipped_count) == (5, 2, 3, 0)
    assert {i for i, _ in stats.missing} == {"1064", "1071", "1087"}
    rows = by_id(out)
    slot = rows["1077"]
    assert slot.question == "How many sounding erhu in the video\uff1f"  # <Object> filled from templ_values
    assert slot.answer == "two"  # from the `anser` key
    assert slot.type == "Audio-Visual/Counting" and slot.task == "qa"
    assert slot.video == str(videos / "MUSIC-AVQA-videos-Real" / "00000729.mp4")  # found in a subfolder
    assert slot.extra["video_id"] == "00000729" and slot.extra["question_deleted"] == 0
    plain = rows["1059"]
    assert plain.question == "Is this sound from the instrument in the video?" and plain.answer == "yes"
    assert plain.type == "Audio-Visual/Existential"
    # relative video paths: the manifest is in tmp_path, the videos below it
    assert {r["video"] for r in raw_rows(out)} == {"videos/MUSIC-AVQA-videos-Real/00000729.mp4", "videos/00005247.mp4"}


def test_fill_template():
    assert fill_template("Is the <Object> on the <LR> louder?", ["piano", "left"]) == "Is the piano on the left louder?"
    assert fill_template("no slots", ["extra"]) == "no slots"
    assert fill_template("<Object> and <Object>", ["a"]) is None


def test_activitynet_qa_join(tmp_path):
    videos = tmp_path / "videos"
    touch(videos, "v_dd1LE0m_KVg.mkv", "YRMbCxetWtg.mp4")  # with and without the v_ prefix
    out = tmp_path / "anet.jsonl"
    # answers file first: which is which is told by content, not by order
    stats = convert("activitynet-qa", [SAMPLES / "activitynet-qa-sample_a.json",
                                       SAMPLES / "activitynet-qa-sample_q.json"], videos, out)
    assert (stats.records, stats.written, stats.missing_count) == (5, 2, 3)
    rows = by_id(out)
    a = rows["v_dd1LE0m_KVg_9"]
    assert (a.question, a.answer, a.type) == ("is the person in the video a chinese", "no", "yes_no")
    assert a.video.endswith("v_dd1LE0m_KVg.mkv") and a.extra["type_code"] == 3
    b = rows["v_YRMbCxetWtg_2"]
    assert (b.question, b.answer) == ("is the person in yellow clothes indoors", "yes")
    assert b.video.endswith("YRMbCxetWtg.mp4")
    missing = dict(stats.missing)
    assert missing["v_RG98kemBdyg_2"] == "v_RG98kemBdyg.*"


def test_activitynet_qa_needs_both_files(tmp_path):
    with pytest.raises(ConvertError, match="answers"):
        convert("activitynet-qa", [SAMPLES / "activitynet-qa-sample_q.json"], tmp_path, tmp_path / "o.jsonl")


def test_nextqa_multiple_choice(tmp_path):
    videos = tmp_path / "videos"
    touch(videos, "NExTVideo/0043/2405940242.mp4", "1110/3821781616.mp4", "elsewhere/8740703217.mp4")
    out = tmp_path / "next.jsonl"
    stats = convert("nextqa", [SAMPLES / "nextqa-sample.csv", SAMPLES / "nextqa-sample-map_vid_vidorID.json"],
                    videos, out)
    assert (stats.records, stats.written, stats.missing_count) == (5, 3, 2)
    rows = by_id(out)
    a = rows["2405940242_0"]
    assert a.question == "why is the lady in white wearing a helmet"
    assert a.choices == ["experimenting with chemicals", "safety", "skiing", "sunny", "take photo"]
    assert a.answer == "safety"  # index 1
    assert a.type == "CW" and a.extra["family"] == "causal" and a.extra["answer_index"] == 1
    assert a.video == str(videos / "NExTVideo" / "0043" / "2405940242.mp4")
    c = rows["3821781616_5"]
    assert (c.question, c.answer, c.type) == ("where is the man at", "living room", "DL")
    assert c.video == str(videos / "1110" / "3821781616.mp4")
    d = rows["8740703217_1"]  # not where the map says: found by name
    assert d.answer == "eat the food" and d.type == "TN"
    assert d.video == str(videos / "elsewhere" / "8740703217.mp4")
    assert dict(stats.missing)["7308042410_3"] == "NExTVideo/1010/7308042410.mp4"


def test_nextqa_without_map(tmp_path):
    touch(tmp_path / "v", "2405940242.webm")
    stats = convert("nextqa", [SAMPLES / "nextqa-sample.csv"], tmp_path / "v", tmp_path / "n.jsonl")
    assert stats.written == 1
    assert by_id(tmp_path / "n.jsonl")["2405940242_0"].video.endswith("2405940242.webm")


def test_vggsound(tmp_path):
    videos = tmp_path / "videos"
    touch(videos, "Y3Iu9Xq-TaU_000505.mp4", "cZBUN4-Vu2g_000118.mkv")  # another extension is found too
    out = tmp_path / "vgg.jsonl"
    stats = convert("vggsound", [SAMPLES / "vggsound-sample.csv"], videos, out)
    assert (stats.records, stats.written, stats.missing_count) == (5, 2, 3)
    rows = by_id(out)
    a = rows["Y3Iu9Xq-TaU_000505"]
    assert (a.task, a.answer, a.question, a.start, a.end) == ("classify", "people slurping", None, None, None)
    assert a.extra == {"youtube_id": "Y3Iu9Xq-TaU", "youtube_start": 505}
    assert rows["cZBUN4-Vu2g_000118"].answer == "chipmunk chirping"


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


def test_ave(tmp_path):
    videos = tmp_path / "videos"
    touch(videos, "AVE/RUhOCu3LNXM.mp4", "AVE/4gyda6wcww0.mp4")
    ann = tmp_path / "Annotations.txt"  # the official file starts with a header line
    ann.write_text("Category&VideoID&Quality&StartTime&EndTime\n"
                   + (SAMPLES / "ave-sample.txt").read_text(encoding="utf-8"), encoding="utf-8")
    out = tmp_path / "ave.jsonl"
    stats = convert("ave", [ann], videos, out)
    assert (stats.records, stats.written, stats.missing_count, stats.skipped_count) == (6, 2, 4, 0)
    rows = by_id(out)
    bell = rows["RUhOCu3LNXM"]
    assert (bell.task, bell.answer, bell.start, bell.end) == ("classify", "Church bell", None, None)
    assert bell.extra["event_start"] == 0 and bell.extra["event_end"] == 10 and bell.extra["quality"] == "good"
    bark = rows["4gyda6wcww0"]
    assert bark.answer == "Bark" and (bark.extra["event_start"], bark.extra["event_end"]) == (6, 10)


def test_msrvtt_qa(tmp_path):
    # No MSRVTT-QA sample in shared/: records written after the official schema.
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


def test_repeated_ids_renamed(tmp_path):
    touch(tmp_path / "v", "00000729.mp4")
    sample = SAMPLES / "music-avqa-sample.json"
    stats = convert("music-avqa", [sample, sample], tmp_path / "v", tmp_path / "o.jsonl")
    assert stats.written == 2 and stats.renamed_ids == 1
    assert set(by_id(tmp_path / "o.jsonl")) == {"1077", "1077-2"}


def test_wrong_format_is_an_error(tmp_path):
    with pytest.raises(ConvertError, match="activitynet-qa-sample_q.json: record 0: missing key 'video_id'"):
        convert("music-avqa", [SAMPLES / "activitynet-qa-sample_q.json"], tmp_path, tmp_path / "o.jsonl")
    with pytest.raises(ConvertError, match="header has no column 'video'"):
        convert("nextqa", [SAMPLES / "vggsound-sample.csv"], tmp_path, tmp_path / "o.jsonl")
    with pytest.raises(ConvertError, match="not found"):
        convert("ave", [tmp_path / "nope.txt"], tmp_path, tmp_path / "o.jsonl")


def test_cli_convert(tmp_path, capsys):
    videos = tmp_path / "videos"
    touch(videos, "Y3Iu9Xq-TaU_000505.mp4")
    out = tmp_path / "o.jsonl"
    args = build_parser().parse_args(["convert", "--format", "vggsound", "--annotations",
                                      str(SAMPLES / "vggsound-sample.csv"), "--videos", str(videos),
                                      "--out", str(out)])
    assert cmd_convert(args) == 0
    captured = capsys.readouterr()
    assert "1 rows written" in captured.out and "4 without a video file" in captured.out
    assert "4 rows have no video file" in captured.err and "Oct7HCu1Vwo_000035" in captured.err
    assert len(read_manifest(out)) == 1

    # nothing found: exit 1 and no manifest
    empty_out = tmp_path / "none.jsonl"
    args = Namespace(format="vggsound", annotations=[str(SAMPLES / "vggsound-sample.csv")],
                     videos=str(tmp_path / "empty"), out=str(empty_out))
    (tmp_path / "empty").mkdir()
    assert cmd_convert(args) == 1
    assert not empty_out.exists()
    # an input error goes to `mirasol.cli.main`, which prints one line and exits with 2
    args.videos = str(tmp_path / "does-not-exist")
    with pytest.raises(ConvertError, match="videos folder not found"):
        cmd_convert(args)
    capsys.readouterr()
    assert main(["convert", "--format", "vggsound", "--annotations", str(SAMPLES / "vggsound-sample.csv"),
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
