"""Store formats of the clip cache (data.store): compressed round trips, resume after a torn write,
corrupt rows, cache folders keyed by media settings and format, and store "none" (decode on the fly)."""

import hashlib
import json
import zlib

import numpy as np
import pytest
import torch

from mirasol import MirasolConfig
from mirasol.cli import main as cli
from mirasol.config import ConfigError
from mirasol.data import cache as cache_mod
from mirasol.data import codecs
from mirasol.data.cache import (MEDIA_KEYS, CacheError, ClipCache, clip_key, default_cache_dir, prepare,
                                resolve_store)
from mirasol.data.dataset import ClipDataset, collate
from mirasol.data.tokenizer import MirasolTokenizer, tokenizer_texts
from mirasol.data.manifest import read_manifest
from mirasol.run_config import config_keys_help, load_run_config

ROLES = ["fits", "short", "no_duration", "long"]  # one row each, in this order


@pytest.fixture
def manifest(tmp_path, media):
    (tmp_path / "empty.mp4").write_bytes(b"")
    rows = [{"id": role, "video": str(media.path(role)), "task": "qa", "question": "what?", "answer": role[:4]}
            for role in ROLES]
    rows.insert(1, {"id": "window", "video": str(media.path("long")), "start": 4.0, "end": 8.0,
                    "task": "caption", "answer": "a pancake"})
    rows.append({"id": "again", "video": str(media.path("fits")), "task": "classify", "answer": "ex"})
    rows.append({"id": "silent", "video": str(media.path("one_pixel")), "task": "classify", "answer": "pixel"})
    rows.append({"id": "broken", "video": str(tmp_path / "empty.mp4"), "task": "classify", "answer": "none"})
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


CFG = MirasolConfig.preset("tiny")


@pytest.mark.parametrize("store", ["h264", "jpeg"])
def test_compressed_store_round_trip_is_close_to_raw(manifest, tmp_path, store):
    raw_report = prepare([manifest], tmp_path / "raw", CFG, workers=1, progress=False, store="raw")
    report = prepare([manifest], tmp_path / store, CFG, workers=2, progress=False, store=store)
    assert report == raw_report  # report.json is the same whatever the format
    raw, packed = ClipCache(tmp_path / "raw", CFG), ClipCache(tmp_path / store, CFG)
    assert packed.store == store and raw.store == "raw"
    assert not (tmp_path / store / "video.u8").exists() and (tmp_path / store / "video.bin").exists()
    assert set(packed.index) == set(raw.index) and len(packed.index) == 6
    for key in raw.index:
        rv, ra, ri = raw.get(key)
        v, a, info = packed.get(key)
        assert v.shape == rv.shape and v.dtype == np.uint8
        assert np.array_equal(a, ra)  # audio rows are stored as they are
        assert {k: info[k] for k in ("has_audio", "valid_seconds", "valid_chunks")} == \
               {k: ri[k] for k in ("has_audio", "valid_seconds", "valid_chunks")}
        # tiny frames (32 px) are all fine detail, the hardest case for a codec; the base-size figures
        # (>= 35 dB) are measured by `mirasol bench store`
        assert codecs.psnr(np.asarray(rv), v) > 29, key
    assert (tmp_path / store / "video.bin").stat().st_size < (tmp_path / "raw" / "video.u8").stat().st_size


def test_h264_codec_round_trip_at_a_larger_size():
    yy, xx = np.mgrid[0:96, 0:96]
    frames = np.stack([np.stack([(xx + 3 * t) % 256, (yy * 2) % 256, ((xx + yy) // 2 + 5 * t) % 256])
                       for t in range(12)]).astype(np.uint8)
    data = codecs.encode(frames, "h264", frames_per_chunk=4)
    assert len(data) < frames.nbytes / 10
    decoded = codecs.decode(data, "h264", frames.shape)
    assert codecs.psnr(frames, decoded) >= 35
    with pytest.raises(codecs.CodecError, match="shape"):
        codecs.decode(data, "h264", (13, 3, 96, 96))
    with pytest.raises(codecs.CodecError):
        codecs.decode(b"\x03\x00\x00\x00" + b"\x00" * 5, "jpeg", frames.shape)


@pytest.mark.parametrize("store", ["h264", "jpeg"])
def test_compressed_store_resumes_after_a_torn_write(manifest, tmp_path, monkeypatch, store):
    out = tmp_path / "cache"
    first = tmp_path / "first.jsonl"
    first.write_text("".join(manifest.read_text().splitlines(keepends=True)[:3]))
    prepare([first], out, CFG, workers=1, progress=False, store=store)
    before = {k: ClipCache(out, CFG).get(k)[0].copy() for k in ClipCache(out, CFG).index}
    blob = (out / "video.bin").read_bytes()
    # a run killed while appending: half a row in video.bin, part of one in audio.f16, no index line
    with open(out / "video.bin", "ab") as f:
        f.write(blob[: len(blob) // 2])
    with open(out / "audio.f16", "ab") as f:
        f.write(b"\x01" * 100)
    calls = []
    real = cache_mod._decode
    monkeypatch.setattr(cache_mod, "_decode", lambda job: calls.append(job) or real(job))
    report = prepare([manifest], out, CFG, workers=1, progress=False, store=store)
    assert sorted(job[0].id for job in calls) == sorted(["no_duration", "long", "silent", "broken"])
    assert report["ok"] == 6
    cache = ClipCache(out, CFG)
    assert (out / "video.bin").read_bytes()[: len(blob)] == blob  # the torn bytes were cut, not kept
    assert (out / "video.bin").stat().st_size == max(e["offset"] + e["size"] for e in cache.index.values())
    assert (out / "audio.f16").stat().st_size == 6 * cache.audio_row_bytes
    for key, video in before.items():
        assert np.array_equal(cache.get(key)[0], video)
    for key in cache.index:
        assert cache.get(key)[0].shape == (CFG.num_frames, 3, 32, 32)


def test_corrupt_compressed_row_names_the_cache_and_the_clip(manifest, media, tmp_path):
    out = tmp_path / "cache"
    prepare([manifest], out, CFG, workers=1, progress=False, store="h264")
    name = media.path("no_duration").name
    key = clip_key(str(media.path("no_duration")), None, None)
    entry = ClipCache(out, CFG).index[key]
    with open(out / "video.bin", "r+b") as f:  # a flipped disk block in the middle of that row
        f.seek(entry["offset"] + entry["size"] // 2)
        f.write(b"\xff" * 64)
    cache = ClipCache(out, CFG)
    with pytest.raises(CacheError, match=r"corrupt.*" + name.replace(".", r"\.")) as err:
        cache.get(key)
    assert str(out) in str(err.value) and "mirasol prepare" in str(err.value)
    other = clip_key(str(media.path("fits")), None, None)
    assert cache.get(other)[0].shape == (CFG.num_frames, 3, 32, 32)  # other rows still read
    # bytes that match their checksum but are not a stream of the format (e.g. a wrong format)
    lines = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    garbage = b"\x02\x00\x00\x00" + (10).to_bytes(4, "little") + (entry["size"] - 22).to_bytes(4, "little")
    garbage += b"\x00" * (entry["size"] - len(garbage))
    with open(out / "video.bin", "r+b") as f:
        f.seek(entry["offset"])
        f.write(garbage)
    [line] = [line for line in lines if line["key"] == key]
    line["crc32"] = zlib.crc32(garbage)
    (out / "index.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(CacheError, match=r"does not decode.*|corrupt") as err:
        ClipCache(out, CFG).get(key)
    assert name in str(err.value) and str(out) in str(err.value)


def test_cache_folder_is_keyed_by_media_settings_and_format(tmp_path):
    manifest = tmp_path / "m.jsonl"
    folders = {store: default_cache_dir(manifest, CFG, store) for store in ("raw", "h264", "jpeg", "none")}
    assert len(set(folders.values())) == 4
    # raw keeps the folder caches had before the formats existed (hash of the media settings only)
    legacy = hashlib.sha1(json.dumps({k: getattr(CFG, k) for k in MEDIA_KEYS}, sort_keys=True).encode())
    assert folders["raw"].name == legacy.hexdigest()[:10]
    assert default_cache_dir(manifest, CFG) == folders["raw"]  # tiny: auto is raw
    assert default_cache_dir(manifest, CFG.replace(image_size=64), "raw") != folders["raw"]
    base = MirasolConfig.preset("base")
    assert resolve_store("auto", base) == "h264" and resolve_store("auto", MirasolConfig.preset("mirasol3b")) == "h264"
    assert resolve_store("auto", CFG) == "raw" and resolve_store("auto", MirasolConfig.preset("small")) == "raw"
    assert default_cache_dir(manifest, base) == default_cache_dir(manifest, base, "h264")
    with pytest.raises(CacheError, match="unknown store format 'zip'"):
        resolve_store("zip", CFG)


def test_cache_refuses_another_format(manifest, tmp_path):
    one = tmp_path / "one.jsonl"
    one.write_text(manifest.read_text().splitlines(keepends=True)[0])
    prepare([one], tmp_path / "c", CFG, workers=1, progress=False, store="h264")
    assert json.loads((tmp_path / "c" / "media.json").read_text())["store"] == "h264"
    assert ClipCache(tmp_path / "c", CFG).store == "h264"  # opened as it was made
    assert ClipCache(tmp_path / "c", CFG, store="auto").store == "h264"  # auto: an existing folder as it is
    with pytest.raises(CacheError, match=r"other media settings.*'store': \('h264', 'raw'\)"):
        ClipCache(tmp_path / "c", CFG, store="raw")
    prepare([one], tmp_path / "r", CFG, workers=1, progress=False, store="raw")
    assert "store" not in json.loads((tmp_path / "r" / "media.json").read_text())  # as before
    with pytest.raises(CacheError, match=r"'store': \('raw', 'jpeg'\)"):
        prepare([one], tmp_path / "r", CFG, workers=1, progress=False, store="jpeg")


def test_store_none_gives_the_samples_of_the_raw_store(manifest, tmp_path):
    raw_report = prepare([manifest], tmp_path / "raw", CFG, workers=1, progress=False, store="raw")
    report = prepare([manifest], tmp_path / "none", CFG, workers=2, progress=False, store="none")
    assert report == raw_report  # the same clips checked, the same rows skipped
    assert sorted(p.name for p in (tmp_path / "none").iterdir()) == \
           ["failed.jsonl", "index.jsonl", "media.json", "report.json"]  # no frames kept
    samples = read_manifest(manifest)
    tok = MirasolTokenizer.train(tokenizer_texts(samples), vocab_size=300)
    raw = ClipDataset(samples, ClipCache(tmp_path / "raw", CFG), tok, max_len=32)
    live = ClipDataset(samples, ClipCache(tmp_path / "none", CFG, store="none"), tok, max_len=32)
    assert len(live) == len(raw) == 7 and live.skipped == raw.skipped == 1
    loader = torch.utils.data.DataLoader(live, batch_size=4, num_workers=1, collate_fn=lambda b: collate(b, tok.pad_id))
    batches = list(loader)  # decoded in a worker process
    expected = [collate([raw[i] for i in range(s, min(s + 4, len(raw)))], tok.pad_id) for s in range(0, len(raw), 4)]
    for got, want in zip(batches, expected, strict=True):
        assert got.keys() == want.keys()
        for k in want:
            assert torch.equal(got[k], want[k]), k


def test_data_store_config_key_and_cli(manifest, tmp_path):
    assert load_run_config("tiny").data.store == "auto"
    assert load_run_config("tiny", ["data.store=none"]).data.store == "none"
    with pytest.raises(ConfigError, match="data.store.*auto, raw, h264, jpeg, none.*'zip'"):
        load_run_config("tiny", ["data.store=zip"])
    assert "store=auto" in config_keys_help()
    one = tmp_path / "one.jsonl"
    one.write_text(manifest.read_text().splitlines(keepends=True)[0])
    assert cli(["prepare", "--manifest", str(one), "--out", str(tmp_path / "c"), "--workers", "1",
                "--store", "jpeg"]) == 0
    assert ClipCache(tmp_path / "c", CFG).store == "jpeg"
    assert cli(["prepare", "--manifest", str(one), "--out", str(tmp_path / "c"), "--workers", "1",
                "--store", "h264"]) == 2  # the folder holds another format: a clear error, not a mix
