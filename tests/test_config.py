import json

import pytest
import torch

from mirasol import ConfigError, Mirasol, MirasolConfig
from mirasol.config import PRESETS


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_build_and_round_trip(name):
    cfg = MirasolConfig.preset(name)
    assert MirasolConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert cfg.audio_frames_per_chunk * cfg.audio_hop_ms / 1000 == pytest.approx(cfg.chunk_seconds)


def test_overrides_and_combiner_choice():
    cfg = MirasolConfig.preset("tiny", combiner="ttm", num_chunks=3)
    assert cfg.combiner == "ttm" and cfg.num_chunks == 3
    assert cfg.replace(av_layers=1).av_layers == 1


def test_unknown_key_is_named_with_suggestion():
    with pytest.raises(ConfigError, match="unknown config key 'num_chunk'.*did you mean 'num_chunks'"):
        MirasolConfig.preset("tiny", num_chunk=4)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        MirasolConfig.preset("huge")


@pytest.mark.parametrize("overrides, pattern", [
    (dict(image_size=30), r"image_size=30 is not divisible by patch_size=8"),
    (dict(num_frames=10), r"num_frames=10 is not divisible by num_chunks=4"),
    (dict(frames_per_chunk=3), r"frames_per_chunk=3 is not divisible by tubelet_size=2"),
    (dict(n_mels=40), r"n_mels=40 is not divisible by audio_patch_mels=16"),
    (dict(fps=3.0), r"'fps'.*not a whole number of 10 ms audio hops"),
    (dict(text_dim=130), r"text_dim=130 is not divisible by text_heads=4"),
    (dict(combiner="lstm"), r"'combiner': must be one of"),
    (dict(mask_ratio=1.5), r"'mask_ratio'"),
    (dict(video_layers=0), r"'video_layers': must be a positive integer"),
    (dict(pad_token_id=1), r"special token ids must differ"),
])
def test_inconsistent_configs_are_rejected_with_numbers(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        MirasolConfig.preset("tiny", **overrides)


def test_num_frames_convenience():
    assert MirasolConfig.preset("tiny", num_frames=12, tubelet_size=1).frames_per_chunk == 3


def test_mirasol3b_parameter_count_on_meta_device():
    with torch.device("meta"):
        model = Mirasol(MirasolConfig.preset("mirasol3b"))
    counts = model.num_parameters()
    assert abs(counts["total"] - 3e9) / 3e9 < 0.10, counts
    assert 0.4 < counts["audio_video"] / counts["total"] < 0.6, counts
    assert next(model.parameters()).device.type == "meta"
