"""bf16 correctness without a GPU: CPU autocast (the path `train.precision: bf16` takes) against fp32.

Tolerances. bf16 keeps 8 significant bits: each rounding is off by at most 2^-9 = 0.2 % relative,
and errors add up over the ~10 matmul/attention layers a token passes through (and the sums inside
each). Observed on the tiny preset at init: logits 0.5 % (relative L2), whole gradient 0.6 %, the
worst single tensor 1.4 %, worst per-tensor cosine 0.9999. The bounds below are ~4x those: loose
enough for another CPU's kernels, tight enough that a wrong cast (fp32 weights rounded into a
bf16 optimizer, an fp16 overflow, a missing `.float()` before the softmax) fails them.
"""

import pytest
import torch

from conftest import answer_batch, media_batch
from mirasol import Mirasol, MirasolConfig
from mirasol.run_config import load_run_config
from mirasol.train.loop import _autocast

LOGITS_REL = 2e-2  # relative L2 error of the logits
LOSS_REL = 2e-3  # relative error of the (fp32-accumulated) losses
GRAD_REL = 2.5e-2  # relative L2 error of the whole gradient
GRAD_TENSOR_REL = 6e-2  # ... of any single parameter's gradient
GRAD_COS = 0.998  # cosine of any single parameter's gradient with its fp32 counterpart


@pytest.fixture(autouse=True)
def _one_thread():
    # bf16 matmuls on a CPU without bf16 units are slow, and on a shared machine one thread is
    # much faster than two waiting for each other
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def bf16_autocast():
    """The training loop's own autocast for `train.precision: bf16`, on the CPU."""
    return _autocast(load_run_config("tiny", ["train.precision=bf16"]), torch.device("cpu"))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def forward_backward(model, video, audio, ids, labels, bf16: bool):
    model.zero_grad(set_to_none=True)
    with bf16_autocast() if bf16 else torch.autocast("cpu", enabled=False):
        out = model(video, audio, ids, labels)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("combiner", ["transformer", "ttm"])
def test_bf16_forward_and_backward_agree_with_fp32(combiner):
    torch.manual_seed(0)
    cfg = MirasolConfig.preset("tiny", combiner=combiner)
    model = Mirasol(cfg).train()
    video, audio = media_batch(cfg, batch=4, seed=1)
    ids, labels = answer_batch(cfg, [[50, 51], [52], [53, 54, 55], [56]])
    o32, g32 = forward_backward(model, video, audio, ids, labels, bf16=False)
    o16, g16 = forward_backward(model, video, audio, ids, labels, bf16=True)
    assert o16.logits.dtype == torch.bfloat16 and o32.logits.dtype == torch.float32  # bf16 really ran
    assert rel(o16.logits, o32.logits) < LOGITS_REL
    assert o16.text_loss.item() == pytest.approx(o32.text_loss.item(), rel=LOSS_REL)
    assert o16.latent_loss.item() == pytest.approx(o32.latent_loss.item(), rel=LOSS_REL)
    # gradients: same parameters reached, each pointing the same way with about the same size
    assert g16.keys() == g32.keys()
    assert all(g.dtype == torch.float32 for g in g16.values())  # fp32 master weights get fp32 grads
    flat32 = torch.cat([g.flatten() for g in g32.values()])
    flat16 = torch.cat([g16[n].flatten() for n in g32])
    assert rel(flat16, flat32) < GRAD_REL
    # tensors whose gradient is more than rounding noise, each on its own
    significant = [name for name, g in g32.items() if g.norm() > 1e-3 * flat32.norm()]
    assert len(significant) > len(g32) // 4  # a good share of the tensors, not a few
    for name in significant:
        g = g32[name]
        assert rel(g16[name], g) < GRAD_TENSOR_REL, name
        assert torch.cosine_similarity(g16[name].flatten(), g.flatten(), dim=0) > GRAD_COS, name


def test_bf16_training_loss_falls_and_generation_matches_fp32():
    """Train under bf16 autocast (fp32 weights, as the loop does) on four clips whose answers
    depend on the media; the loss must fall, and generation / candidate scoring under bf16 must
    give what fp32 gives."""
    torch.manual_seed(0)
    cfg = MirasolConfig.preset("tiny", mask_ratio=0.0)
    model = Mirasol(cfg)
    video, audio = media_batch(cfg, batch=4, seed=3)
    answers = [[50, 51], [52], [53, 54, 55], [56]]
    ids, labels = answer_batch(cfg, answers)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        with bf16_autocast():
            out = model(video, audio, ids, labels)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.text_loss.item())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])

    model.eval()
    prompts = torch.tensor([[1, 40, 41, 3]] * 4)
    fp32_tokens = model.generate(video, audio, prompts, max_new_tokens=5)
    with bf16_autocast():
        bf16_tokens = model.generate(video, audio, prompts, max_new_tokens=5)
        bf16_beam = model.generate(video, audio, prompts, max_new_tokens=5, num_beams=3)
    for row, answer in zip(fp32_tokens.tolist(), answers):
        assert row[: len(answer) + 1] == answer + [cfg.eos_token_id]
    assert torch.equal(bf16_tokens, fp32_tokens)
    assert torch.equal(bf16_beam[:, : fp32_tokens.shape[1]], fp32_tokens)
    # the trained model's forward (larger weights than at init) still within the bounds
    with torch.no_grad():
        o32 = model(video, audio, ids, labels)
        with bf16_autocast():
            o16 = model(video, audio, ids, labels)
    assert rel(o16.logits, o32.logits) < LOGITS_REL
    candidates = [[[50, 51], [52], [53, 54, 55], [56]]] * 4
    s32 = model.score_candidates(video, audio, prompts, candidates)
    with bf16_autocast():
        s16 = model.score_candidates(video, audio, prompts, candidates)
    assert torch.equal(s16.argmax(-1), s32.argmax(-1)) and torch.equal(s32.argmax(-1), torch.arange(4))
    # log-likelihoods (sums over <= 4 tokens): within 0.05 nats + 2 % of their size
    torch.testing.assert_close(s16.float(), s32.float(), rtol=2e-2, atol=5e-2)
