"""Every part learns: one backward pass of the text loss (and, separately, of the latent loss)
reaches every parameter of the video encoder, the audio encoder, the combiner and the AV model,
for both combiners. A part whose output were dropped on the way (as once happened to the video
encoder of a public implementation of this model) would get no gradient at all."""

from __future__ import annotations

import pytest
import torch

from mirasol import Mirasol, MirasolConfig
from mirasol.config import IGNORE_INDEX

PARTS = ("video_encoder", "audio_encoder", "video_proj", "audio_proj", "combiner", "av_model")
# Parameters that by design take no part in a given loss.
EXEMPT = {
    "text": {"av_model.mask_token", "av_model.predictor."},  # mask_ratio 0; the predictor serves the latent loss
    "latent": {"av_model.mask_token"},
}


def _batch(cfg: MirasolConfig, clips: int = 2, rows_per_clip: int = 2):
    g = torch.Generator().manual_seed(0)
    video = torch.rand(clips, cfg.num_frames, 3, cfg.image_size, cfg.image_size, generator=g)
    audio = torch.randn(clips, cfg.n_mels, cfg.audio_frames, generator=g)
    ids = torch.randint(4, cfg.vocab_size, (clips * rows_per_clip, 10), generator=g)
    labels = ids.clone()
    labels[:, :6] = IGNORE_INDEX
    media_index = torch.arange(clips).repeat_interleave(rows_per_clip)
    return video, audio, ids, labels, media_index


def _gradients(model: Mirasol, loss: torch.Tensor) -> dict[str, torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad for name, p in model.named_parameters()}


def _dead(grads: dict, loss: str) -> list[str]:
    """Parameters of the media parts whose gradient is missing or exactly zero."""
    exempt = EXEMPT[loss]
    dead = []
    for name, grad in grads.items():
        if not name.startswith(PARTS) or any(name == e or name.startswith(e) for e in exempt):
            continue
        if grad is None or not torch.any(grad != 0):
            dead.append(name)
    return dead


@pytest.mark.parametrize("combiner", ["transformer", "ttm"])
def test_text_loss_reaches_every_media_parameter(combiner):
    torch.manual_seed(0)
    cfg = MirasolConfig.preset("tiny", combiner=combiner, latent_loss_weight=0.0)
    model = Mirasol(cfg)
    out = model(*_batch(cfg)[:4], media_index=_batch(cfg)[4])
    grads = _gradients(model, out.text_loss)
    assert _dead(grads, "text") == []
    for part in PARTS:  # and every part as a whole, named, so a failure says which
        total = sum(float(g.abs().sum()) for n, g in grads.items() if n.startswith(part + ".") and g is not None)
        assert total > 0, f"{part} gets no gradient from the text loss"


@pytest.mark.parametrize("combiner", ["transformer", "ttm"])
def test_latent_loss_reaches_every_media_parameter(combiner):
    torch.manual_seed(0)
    cfg = MirasolConfig.preset("tiny", combiner=combiner)
    model = Mirasol(cfg)
    video, audio, ids, labels, media_index = _batch(cfg)
    out = model(video, audio, ids, labels, media_index=media_index)
    grads = _gradients(model, out.latent_loss)
    assert _dead(grads, "latent") == []
    # the text decoder takes no part in the latent loss
    assert all(g is None or not torch.any(g != 0) for n, g in grads.items() if n.startswith("text_decoder."))


def test_dropping_a_modality_is_caught():
    """The check itself can fail: with the video tokens thrown away before the combiner, the video
    encoder's parameters are reported dead."""
    torch.manual_seed(0)
    cfg = MirasolConfig.preset("tiny", latent_loss_weight=0.0)
    model = Mirasol(cfg)
    original = model.modality_tokens

    def without_video(video_chunks, audio_chunks):
        v, a = original(video_chunks, audio_chunks)
        return v.detach() * 0, a

    model.modality_tokens = without_video
    video, audio, ids, labels, media_index = _batch(cfg)
    grads = _gradients(model, model(video, audio, ids, labels, media_index=media_index).text_loss)
    dead = _dead(grads, "text")
    assert any(n.startswith("video_encoder.") for n in dead)
    assert not any(n.startswith("audio_encoder.") for n in dead)


def test_contrastive_loss_reaches_both_encoders():
    torch.manual_seed(0)
    cfg = MirasolConfig.preset("tiny", av_contrastive_weight=1.0)
    model = Mirasol(cfg)
    video, audio, ids, labels, media_index = _batch(cfg)
    out = model(video, audio, ids, labels, media_index=media_index)
    assert out.contrastive_loss is not None and out.contrastive_loss.item() > 0
    grads = _gradients(model, out.contrastive_loss)
    for part in ("video_encoder.", "audio_encoder.", "contrast_video.", "contrast_audio."):
        assert any(g is not None and torch.any(g != 0) for n, g in grads.items() if n.startswith(part)), part
    # off by default: no extra weights, no extra loss
    plain = Mirasol(MirasolConfig.preset("tiny"))
    assert not any(n.startswith("contrast_") for n in plain.state_dict())
    assert plain(video, audio, ids, labels, media_index=media_index).contrastive_loss is None
