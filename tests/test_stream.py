"""Streaming (model.stream): chunk-by-chunk latents and answers equal the batch path; a window of
W chunks bounds the AV model's cache and what a chunk's latents depend on."""

import pytest
import torch

from conftest import media_batch
from mirasol import Mirasol, MirasolConfig
from mirasol.model.av_model import block_causal_mask

COMBINERS = ["transformer", "ttm"]


def chunks_of(cfg, video, audio):
    f, a = cfg.frames_per_chunk, cfg.audio_frames_per_chunk
    t = video.shape[1] // f
    return [(video[:, i * f:(i + 1) * f], audio[:, :, i * a:(i + 1) * a]) for i in range(t)]


def setup(combiner, num_chunks=6, **kw):
    cfg = MirasolConfig.preset("tiny", combiner=combiner, num_chunks=num_chunks, **kw)
    model = Mirasol(cfg).eval()
    video, audio = media_batch(cfg)
    return cfg, model, video, audio


def perturb(cfg, video, audio, chunks):
    video, audio = video.clone(), audio.clone()
    f, a = cfg.frames_per_chunk, cfg.audio_frames_per_chunk
    for t in chunks:
        video[:, t * f:(t + 1) * f] = torch.rand_like(video[:, t * f:(t + 1) * f])
        audio[:, :, t * a:(t + 1) * a] += 3.0
    return video, audio


@pytest.mark.parametrize("chunk_delta", [False, True])
@pytest.mark.parametrize("window", [None, 2])
@pytest.mark.parametrize("combiner", COMBINERS)
def test_stream_latents_equal_batch_after_every_chunk(combiner, window, chunk_delta):
    cfg, model, video, audio = setup(combiner, chunk_delta=chunk_delta)
    session = model.stream(max_context_chunks=window)
    with torch.no_grad():
        for t, (v, a) in enumerate(chunks_of(cfg, video, audio)):
            new = session.push(v, a)
            f, af = (t + 1) * cfg.frames_per_chunk, (t + 1) * cfg.audio_frames_per_chunk
            batch = model.encode_media(video[:, :f], audio[:, :, :af], max_context_chunks=window)
            assert session.latents().shape == batch.shape == (2, t + 1, cfg.combiner_tokens, cfg.av_dim)
            torch.testing.assert_close(session.latents(), batch, rtol=0, atol=1e-5)
            torch.testing.assert_close(new[:, 0], batch[:, -1], rtol=0, atol=1e-5)
    assert session.chunks == cfg.num_chunks


@pytest.mark.parametrize("combiner", COMBINERS)
def test_stream_beyond_trained_chunks_and_pushing_several_chunks_at_once(combiner):
    """A model configured for 6 chunks streams 20 (sinusoidal chunk positions); pushing 4 chunks in
    one call equals pushing them one by one and equals encode_media on all 20."""
    cfg, model, _, _ = setup(combiner)
    long_cfg = cfg.replace(num_chunks=20)
    video, audio = media_batch(long_cfg, seed=3)
    one, several = model.stream(), model.stream()
    with torch.no_grad():
        for v, a in chunks_of(cfg, video, audio):
            one.push(v, a)
        step = 4 * cfg.frames_per_chunk, 4 * cfg.audio_frames_per_chunk
        for i in range(5):
            several.push(video[:, i * step[0]:(i + 1) * step[0]], audio[:, :, i * step[1]:(i + 1) * step[1]])
        batch = model.encode_media(video, audio)
    assert batch.shape[1] == 20
    torch.testing.assert_close(one.latents(), batch, rtol=0, atol=1e-5)
    torch.testing.assert_close(several.latents(), batch, rtol=0, atol=1e-5)


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("combiner", COMBINERS)
def test_stream_answers_equal_batch(combiner, window):
    cfg, model, video, audio = setup(combiner, num_chunks=5)
    session = model.stream(max_context_chunks=window)
    for v, a in chunks_of(cfg, video, audio):
        session.push(v, a)
    prompt = torch.tensor([[1, 10, 11, 12, 3], [0, 0, 1, 13, 3]])
    candidates = [[[20], [21, 22], [23]], [[24, 25], [26], [27]]]
    for kwargs in ({}, {"num_beams": 3}):
        expected = model.generate(video, audio, prompt, max_new_tokens=6, max_context_chunks=window, **kwargs)
        assert torch.equal(session.generate(prompt, max_new_tokens=6, **kwargs), expected)
    with torch.no_grad():
        expected = model.score_candidates(video, audio, prompt, candidates, max_context_chunks=window)
    torch.testing.assert_close(session.score_candidates(prompt, candidates), expected, rtol=0, atol=1e-4)


def test_window_mask():
    mask = block_causal_mask(4, 1, window=2)
    expected = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    assert torch.equal(block_causal_mask(4, 2, window=4), block_causal_mask(4, 2))


@pytest.mark.parametrize("combiner", COMBINERS)
def test_window_bounds_the_cache(combiner):
    cfg, model, video, audio = setup(combiner, num_chunks=8)
    session = model.stream(max_context_chunks=3)
    sizes = []
    for v, a in chunks_of(cfg, video, audio):
        session.push(v, a)
        sizes.append(session.cache_tokens())
    m = cfg.combiner_tokens
    assert sizes == [m, 2 * m] + [2 * m] * 6  # the last W - 1 = 2 chunks stay cached
    unbounded = model.stream()
    for v, a in chunks_of(cfg, video, audio):
        unbounded.push(v, a)
    assert unbounded.cache_tokens() == 8 * m


@pytest.mark.parametrize("av_layers", [1, 2])
def test_window_limits_what_a_chunk_depends_on(av_layers):
    """Transformer combiner (no memory): with window W and L AV layers, chunk t's latents depend only on
    chunks > t - L * (W - 1), i.e. exactly the last W chunks with one layer. Perturbing chunks
    before that leaves chunk t unchanged; without the window the change reaches it."""
    w, t = 2, 7
    cfg, model, video, audio = setup("transformer", num_chunks=8, av_layers=av_layers)
    first = t - av_layers * (w - 1)  # first chunk chunk t can depend on
    v2, a2 = perturb(cfg, video, audio, range(first))
    v3, a3 = perturb(cfg, video, audio, [first])
    with torch.no_grad():
        h = model.encode_media(video, audio, max_context_chunks=w)
        h_far = model.encode_media(v2, a2, max_context_chunks=w)
        h_near = model.encode_media(v3, a3, max_context_chunks=w)
        full, full_far = model.encode_media(video, audio), model.encode_media(v2, a2)
        session = model.stream(max_context_chunks=w)
        for v, a in chunks_of(cfg, v2, a2):
            session.push(v, a)
    torch.testing.assert_close(h_far[:, t], h[:, t], rtol=0, atol=1e-6)  # out of reach: no change
    torch.testing.assert_close(session.latents()[:, t], h[:, t], rtol=0, atol=1e-5)
    # the oldest chunk in reach does matter (at init, through L layers' small residual updates)
    assert (h_near[:, t] - h[:, t]).abs().max() > 5e-5
    assert (full_far[:, t] - full[:, t]).abs().max() > 1e-3  # and without a window, all do


def test_ttm_window_keeps_memory():
    """With the TTM combiner a window bounds attention, but the memory still carries early chunks."""
    cfg, model, video, audio = setup("ttm", num_chunks=8, av_layers=1)
    v2, a2 = perturb(cfg, video, audio, [0])
    with torch.no_grad():
        h, h2 = model.encode_media(video, audio, max_context_chunks=2), model.encode_media(v2, a2, max_context_chunks=2)
    assert (h[:, -1] - h2[:, -1]).abs().max() > 1e-4


def test_stream_rejects_bad_input():
    cfg, model, video, audio = setup("transformer", num_chunks=2)
    with pytest.raises(ValueError, match="max_context_chunks"):
        model.stream(max_context_chunks=0)
    session = model.stream()
    with pytest.raises(RuntimeError, match="push"):
        session.latents()
    with pytest.raises(ValueError, match="frames_per_chunk"):
        session.push(video[:, :1], audio[:, :, : cfg.audio_frames_per_chunk])
    session.push(video[:, : cfg.frames_per_chunk], audio[:, :, : cfg.audio_frames_per_chunk])
    with pytest.raises(ValueError, match="batch size 2"):
        session.push(video[:1, : cfg.frames_per_chunk], audio[:1, :, : cfg.audio_frames_per_chunk])
