import pytest
import torch

from mirasol import MirasolConfig


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def media_batch(cfg: MirasolConfig, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    video = torch.rand(batch, cfg.num_frames, 3, cfg.image_size, cfg.image_size, generator=g)
    audio = torch.randn(batch, cfg.n_mels, cfg.audio_frames, generator=g)
    return video, audio
