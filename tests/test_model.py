"""Direct tests of the model's heart: chunking, masks, causality, caches, padding, losses."""

import pytest
import torch

from conftest import SLOW_TIMEOUT_S, answer_batch, media_batch, tiny
from mirasol import Mirasol, MirasolConfig
from mirasol.model import IGNORE_INDEX, split_chunks
from mirasol.model.av_model import block_causal_mask
from mirasol.model.generation import left_pad

COMBINERS = ["transformer", "ttm"]


def perturb_chunk(cfg, video, audio, t):
    video, audio = video.clone(), audio.clone()
    f, a = cfg.frames_per_chunk, cfg.audio_frames_per_chunk
    video[:, t * f:(t + 1) * f] = torch.rand_like(video[:, t * f:(t + 1) * f])
    audio[:, :, t * a:(t + 1) * a] += 3.0
    return video, audio


def test_block_causal_mask():
    mask = block_causal_mask(3, 2)
    expected = torch.tensor([
        [1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("combiner", COMBINERS)
@pytest.mark.parametrize("t", [0, 1, 2])
def test_future_chunks_do_not_change_past_latents(combiner, t):
    cfg = tiny(combiner=combiner)
    model = Mirasol(cfg).eval()
    video, audio = media_batch(cfg)
    v2, a2 = perturb_chunk(cfg, video, audio, t + 1)
    with torch.no_grad():
        h, h2 = model.encode_media(video, audio), model.encode_media(v2, a2)
    assert h.shape == (2, cfg.num_chunks, cfg.combiner_tokens, cfg.av_dim)
    torch.testing.assert_close(h[:, : t + 1], h2[:, : t + 1], rtol=0, atol=1e-5)
    assert (h[:, t + 1] - h2[:, t + 1]).abs().max() > 1e-3  # and the change does reach chunk t+1


def test_transformer_combiner_is_local_and_ttm_remembers():
    """The Transformer Combiner sees one chunk; the TTM memory carries chunk 0 into later chunks."""
    for combiner, later_changes in (("transformer", False), ("ttm", True)):
        cfg = tiny(combiner=combiner)
        model = Mirasol(cfg).eval()
        video, audio = media_batch(cfg)
        v2, a2 = perturb_chunk(cfg, video, audio, 0)
        with torch.no_grad():
            z, z2 = model.combine(video, audio), model.combine(v2, a2)
        assert (z[:, 0] - z2[:, 0]).abs().max() > 1e-3
        assert ((z[:, 1:] - z2[:, 1:]).abs().max() > 1e-4) == later_changes, combiner


def test_audio_and_video_chunks_cover_the_same_seconds():
    cfg = tiny(num_chunks=5)
    # Each frame / audio frame holds its own timestamp, so a chunk's content says which seconds it covers.
    frame_times = torch.arange(cfg.num_frames) / cfg.fps
    audio_times = torch.arange(cfg.audio_frames) * cfg.audio_hop_ms / 1000
    video = frame_times[None, :, None, None, None].expand(1, -1, 3, cfg.image_size, cfg.image_size)
    audio = audio_times[None, None, :].expand(1, cfg.n_mels, -1)
    v, a = split_chunks(video, audio, cfg)
    assert v.shape[1] == a.shape[1] == cfg.num_chunks
    for t in range(cfg.num_chunks):
        start, end = t * cfg.chunk_seconds, (t + 1) * cfg.chunk_seconds
        vt, at = v[0, t, :, 0, 0, 0], a[0, t, 0]
        assert vt.min() == pytest.approx(start) and at.min() == pytest.approx(start)
        assert vt.max() < end and at.max() < end
        # the audio chunk spans the whole chunk, not a strided subset
        assert at.max() == pytest.approx(end - cfg.audio_hop_ms / 1000)


def test_audio_change_in_chunk_t_only_moves_chunk_t_features():
    cfg = tiny()
    model = Mirasol(cfg).eval()
    video, audio = media_batch(cfg)
    a = cfg.audio_frames_per_chunk
    audio2 = audio.clone()
    audio2[:, :, 2 * a:3 * a] += 2.0
    with torch.no_grad():
        z, z2 = model.combine(video, audio), model.combine(video, audio2)
    changed = [(z[:, t] - z2[:, t]).abs().max().item() > 1e-4 for t in range(cfg.num_chunks)]
    assert changed == [False, False, True, False]


def test_media_shape_errors_name_the_numbers():
    cfg = tiny()
    model = Mirasol(cfg)
    video, audio = media_batch(cfg)
    with pytest.raises(ValueError, match="7 frames, not a multiple of frames_per_chunk=2"):
        model.encode_media(video[:, :7], audio)
    with pytest.raises(ValueError, match="audio has 390 frames.*need 4 x audio_frames_per_chunk=100 = 400"):
        model.encode_media(video, audio[:, :, :390])


def make_text(cfg, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompt_lens = [3, 5, 2][:batch]
    prompts = torch.full((batch, 6), cfg.pad_token_id)
    for i, n in enumerate(prompt_lens):
        prompts[i, :n] = torch.randint(4, cfg.vocab_size, (n,), generator=g)
    return prompts


@pytest.mark.parametrize("combiner", COMBINERS)
def test_cached_generation_equals_uncached(combiner):
    cfg = tiny(combiner=combiner)
    model = Mirasol(cfg).eval()
    video, audio = media_batch(cfg, batch=3)
    prompts = make_text(cfg)
    fast = model.generate(video, audio, prompts, max_new_tokens=10)
    slow = model.generate(video, audio, prompts, max_new_tokens=10, use_cache=False)
    assert fast.shape == (3, 10)
    assert torch.equal(fast, slow)
    beam_fast = model.generate(video, audio, prompts, max_new_tokens=6, num_beams=3)
    beam_slow = model.generate(video, audio, prompts, max_new_tokens=6, num_beams=3, use_cache=False)
    assert torch.equal(beam_fast, beam_slow)


def test_batched_generation_equals_rows_one_at_a_time():
    cfg = tiny()
    model = Mirasol(cfg).eval()
    video, audio = media_batch(cfg, batch=3)
    prompts = make_text(cfg)  # rows of lengths 3, 5, 2, right-padded
    batched = model.generate(video, audio, prompts, max_new_tokens=8)
    batched_scores = model.score_candidates(video, audio, prompts, [[[5, 6], [7]]] * 3)
    for i in range(3):
        row = prompts[i : i + 1, : int((prompts[i] != 0).sum())]
        single = model.generate(video[i : i + 1], audio[i : i + 1], row, max_new_tokens=8)
        assert torch.equal(batched[i, : single.shape[1]], single[0])
        score = model.score_candidates(video[i : i + 1], audio[i : i + 1], row, [[[5, 6], [7]]])
        torch.testing.assert_close(batched_scores[i], score[0], atol=1e-4, rtol=1e-4)


def test_left_pad_repacks_any_padding():
    ids, mask = left_pad(torch.tensor([[5, 6, 0, 0], [0, 7, 0, 8]]), pad_id=0)
    assert ids.tolist() == [[5, 6], [7, 8]] and mask.all()
    ids, mask = left_pad(torch.tensor([[5, 6, 9], [7, 0, 0]]), pad_id=0)
    assert ids.tolist() == [[5, 6, 9], [0, 0, 7]] and mask.tolist() == [[True] * 3, [False, False, True]]


def test_score_candidates_matches_forward_log_likelihood():
    cfg = tiny()
    model = Mirasol(cfg).eval()
    video, audio = media_batch(cfg, batch=1)
    prompt = torch.tensor([[1, 9, 10, 3]])
    scores = model.score_candidates(video, audio, prompt, [[[20, 21], [22]]])
    for c, cand in enumerate([[20, 21], [22]]):
        ids = torch.tensor([[1, 9, 10, 3, *cand, cfg.eos_token_id]])
        with torch.no_grad():
            logp = model(video, audio, ids).logits.log_softmax(-1)
        expected = sum(logp[0, i - 1, ids[0, i]] for i in range(4, ids.shape[1]))
        assert scores[0, c].item() == pytest.approx(expected.item(), abs=1e-4)


def test_sampling_with_top_k_1_is_greedy_and_sampling_is_seeded():
    cfg = tiny()
    model = Mirasol(cfg).eval()
    video, audio = media_batch(cfg, batch=2)
    prompts = make_text(cfg, batch=2)
    greedy = model.generate(video, audio, prompts, max_new_tokens=6)
    top1 = model.generate(video, audio, prompts, max_new_tokens=6, do_sample=True, top_k=1)
    assert torch.equal(greedy, top1)
    s1 = model.generate(video, audio, prompts, max_new_tokens=6, do_sample=True, temperature=2.0,
                        top_p=0.9, generator=torch.Generator().manual_seed(1))
    s2 = model.generate(video, audio, prompts, max_new_tokens=6, do_sample=True, temperature=2.0,
                        top_p=0.9, generator=torch.Generator().manual_seed(1))
    assert torch.equal(s1, s2)


def test_text_loss_covers_answer_tokens_only():
    cfg = tiny(latent_loss_weight=0.0)
    model = Mirasol(cfg).eval()
    video, audio = media_batch(cfg, batch=2)
    ids = torch.tensor([[1, 9, 10, 3, 20, 21, 2], [1, 11, 3, 22, 2, 0, 0]])
    labels = torch.tensor([[-100, -100, -100, -100, 20, 21, 2], [-100, -100, -100, 22, 2, -100, -100]])
    out = model(video, audio, ids, labels)
    logp = out.logits.log_softmax(-1)
    picks = [(0, 3, 20), (0, 4, 21), (0, 5, 2), (1, 2, 22), (1, 3, 2)]
    expected = -torch.stack([logp[b, i, tok] for b, i, tok in picks]).mean()
    assert out.text_loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert out.loss.item() == pytest.approx(out.text_loss.item(), abs=1e-6)
    # changing prompt-position labels to IGNORE_INDEX everywhere else changes nothing; a wrong answer does
    labels2 = labels.clone()
    labels2[0, 4] = 30
    assert model(video, audio, ids, labels2).text_loss.item() != pytest.approx(out.text_loss.item())


def test_media_index_shares_one_encoding_between_questions():
    """Rows asking about the same clip via media_index give exactly the logits and text loss of
    repeating that clip's media per row."""
    cfg = tiny(latent_loss_weight=0.0)
    model = Mirasol(cfg).eval()
    video, audio = media_batch(cfg, batch=2)
    ids = torch.tensor([[1, 9, 3, 20, 2], [1, 10, 3, 21, 2], [1, 11, 3, 22, 2]])
    labels = torch.tensor([[-100, -100, -100, 20, 2], [-100, -100, -100, 21, 2], [-100, -100, -100, 22, 2]])
    index = torch.tensor([1, 0, 1])
    shared = model(video, audio, ids, labels, media_index=index)
    repeated = model(video[index], audio[index], ids, labels)
    torch.testing.assert_close(shared.logits, repeated.logits, atol=1e-5, rtol=1e-5)
    assert shared.text_loss.item() == pytest.approx(repeated.text_loss.item(), abs=1e-6)
    swapped = model(video, audio, ids, labels, media_index=1 - index)
    assert not torch.allclose(swapped.logits, shared.logits, atol=1e-4)  # the index really picks the clip


def test_training_forward_scores_only_answers_with_the_same_loss_and_gradients():
    """The training loop's forward (one clip's cross-attention keys/values shared by its
    questions, logits only at answer positions) gives the text loss and gradients of the plain
    forward on media repeated per row."""
    cfg = tiny(latent_loss_weight=0.0)
    model = Mirasol(cfg).train()
    video, audio = media_batch(cfg, batch=2)
    ids = torch.tensor([[1, 9, 3, 20, 2, 0], [1, 10, 12, 3, 21, 2], [1, 11, 3, 22, 23, 2]])
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 3:5], labels[1, 4:], labels[2, 3:] = ids[0, 3:5], ids[1, 4:], ids[2, 3:]
    index = torch.tensor([1, 0, 1])
    lean = model(video, audio, ids, labels, media_index=index, return_logits=False)
    assert lean.logits is None
    lean.text_loss.backward()
    lean_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    full = model(video[index], audio[index], ids, labels)
    assert full.logits.shape == (3, 6, cfg.vocab_size)
    full.text_loss.backward()
    full_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.testing.assert_close(lean.text_loss, full.text_loss, atol=1e-6, rtol=1e-6)
    assert lean_grads.keys() == full_grads.keys() and "text_decoder.blocks.0.cross.kv.weight" in full_grads
    for name, g in full_grads.items():
        torch.testing.assert_close(lean_grads[name], g, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("combiner", COMBINERS)
def test_padded_chunks_are_invisible_with_a_chunk_mask(combiner):
    """A clip shorter than the window has padding chunks at the end; with chunk_mask they change
    neither the text logits, nor generation, nor candidate scores, nor the latent loss."""
    cfg = tiny(combiner=combiner, latent_loss_weight=1.0)
    model = Mirasol(cfg).eval()
    video, audio = media_batch(cfg, batch=2)
    other_video, other_audio = perturb_chunk(cfg, video, audio, t=3)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    ids = torch.tensor([[1, 9, 3, 20, 2], [1, 10, 3, 21, 2]])
    labels = torch.tensor([[-100, -100, -100, 20, 2], [-100, -100, -100, 21, 2]])
    a = model(video, audio, ids, labels, chunk_mask=mask)
    b = model(other_video, other_audio, ids, labels, chunk_mask=mask)
    torch.testing.assert_close(a.logits[0], b.logits[0], atol=1e-5, rtol=1e-5)  # chunk 3 of clip 0 is padding
    assert not torch.allclose(a.logits[1], b.logits[1], atol=1e-4)  # ... but real in clip 1
    masked_loss = lambda v, au: model.av_model.latent_loss(  # noqa: E731
        model.encode_media(v, au)[:1], model.combine(v, au)[:1], mask[:1])
    assert masked_loss(video, audio).item() == pytest.approx(masked_loss(other_video, other_audio).item(), abs=1e-6)
    unmasked = model(video, audio, ids, labels)
    assert not torch.allclose(unmasked.logits[0], a.logits[0], atol=1e-4)  # the mask is what hid it
    prompts = make_text(cfg)[:2]
    for kw in ({}, {"num_beams": 2}):
        g1 = model.generate(video, audio, prompts, max_new_tokens=5, chunk_mask=mask, **kw)
        g2 = model.generate(other_video, other_audio, prompts, max_new_tokens=5, chunk_mask=mask, **kw)
        assert torch.equal(g1[0], g2[0])
    cands = [[[20], [21, 22]], [[20], [21, 22]]]
    s1 = model.score_candidates(video, audio, prompts, cands, chunk_mask=mask)
    s2 = model.score_candidates(other_video, other_audio, prompts, cands, chunk_mask=mask)
    torch.testing.assert_close(s1[0], s2[0], atol=1e-4, rtol=1e-5)
    assert not torch.allclose(s1[1], s2[1], atol=1e-5)
    with pytest.raises(ValueError, match=r"chunk_mask must be \[B, 4\]"):
        model(video, audio, ids, labels, chunk_mask=mask[:, :3])
    # a video longer than the trained clip (more chunks) takes a chunk_mask of its own length
    long_video, long_audio = torch.cat([video, video], 1), torch.cat([audio, audio], 2)
    long_mask = torch.cat([mask, torch.zeros_like(mask)], 1)  # the added chunks hidden from the decoder
    s3 = model.score_candidates(long_video, long_audio, prompts, cands, chunk_mask=long_mask)
    assert s3.shape == s1.shape and torch.isfinite(s3).all()


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_latent_loss_target_is_detached_and_masking_changes_training_only(kind):
    cfg = tiny(latent_loss=kind, mask_ratio=0.5, text_loss_weight=0.0)
    model = Mirasol(cfg)
    video, audio = media_batch(cfg)
    z = model.combine(video, audio).detach().requires_grad_()
    loss = model.av_model.latent_loss(model.av_model(z.detach()), z)
    assert loss.item() > 0
    # the target side carries no gradient: it only says where the prediction should go
    (grad_target,) = torch.autograd.grad(loss, z, allow_unused=True)
    assert grad_target is None or grad_target.abs().max() == 0
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_media(video, audio), model.encode_media(video, audio))
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model.encode_media(video, audio), model.encode_media(video, audio))


def test_gated_cross_attention_starts_closed():
    cfg = tiny(cross_attn_gate=True)
    model = Mirasol(cfg).eval()
    video, audio = media_batch(cfg)
    ids = torch.tensor([[1, 9, 10, 3]] * 2)
    with torch.no_grad():
        a = model(video, audio, ids).logits
        b = model(torch.rand_like(video), audio + 1, ids).logits
    torch.testing.assert_close(a, b)


@pytest.mark.timeout(SLOW_TIMEOUT_S)  # 150 optimizer steps: minutes where other processes share the CPU
@pytest.mark.parametrize("combiner", COMBINERS)
def test_tiny_model_overfits_a_fixed_batch(combiner):
    """Four clips whose answers depend on the media: the model must learn to read them."""
    torch.manual_seed(0)
    cfg = tiny(combiner=combiner, mask_ratio=0.0)
    model = Mirasol(cfg)
    video, audio = media_batch(cfg, batch=4, seed=3)
    prompt = [1, 40, 41, 3]  # the same question for every clip: only the media tells answers apart
    answers = [[50, 51], [52], [53, 54, 55], [56]]
    ids, labels = answer_batch(cfg, answers, prompt)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
    first = None
    for _ in range(150):
        out = model(video, audio, ids, labels)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = first if first is not None else out.text_loss.item()
    assert out.text_loss.item() < 0.05 * first
    model.eval()
    generated = model.generate(video, audio, torch.tensor([prompt] * 4), max_new_tokens=5)
    for row, answer in zip(generated.tolist(), answers):
        assert row[: len(answer) + 1] == answer + [cfg.eos_token_id]


def test_save_load_round_trip(tmp_path):
    cfg = tiny(combiner="ttm")
    model = Mirasol(cfg).eval()
    video, audio = media_batch(cfg)
    ids = torch.tensor([[1, 9, 10, 3, 20]] * 2)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "config.json").exists() and (tmp_path / "m" / "model.safetensors").exists()
    loaded = Mirasol.from_pretrained(tmp_path / "m")
    assert loaded.cfg == cfg
    with torch.no_grad():
        torch.testing.assert_close(model(video, audio, ids).logits, loaded(video, audio, ids).logits, rtol=0, atol=0)


def test_from_pretrained_names_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        Mirasol.from_pretrained(tmp_path)


def test_from_pretrained_round_trip_and_clear_errors_for_damaged_files(tmp_path):
    """The one loader: a saved model comes back equal; a damaged or mismatched weights file and a
    damaged config.json are CheckpointErrors that name the file, never tracebacks from safetensors."""
    from mirasol.errors import CheckpointError

    cfg = MirasolConfig.preset("tiny", num_chunks=2)
    torch.manual_seed(0)
    model = Mirasol.build(cfg).eval()
    model.save_pretrained(tmp_path / "m")
    again = Mirasol.from_pretrained(tmp_path / "m")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))

    weights = tmp_path / "m" / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(CheckpointError, match=f"{weights}: not a readable safetensors file.*damaged"):
        Mirasol.from_pretrained(tmp_path / "m")
    weights.write_bytes(good)
    other = tmp_path / "other"
    Mirasol.build(cfg.replace(av_dim=64)).save_pretrained(other)
    (tmp_path / "m" / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="does not fit the model this config builds"):
        Mirasol.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json: not valid JSON"):
        Mirasol.from_pretrained(tmp_path / "m")
