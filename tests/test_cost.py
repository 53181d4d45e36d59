"""The analytic cost model (mirasol.cost) against what torch counts and what a step allocates."""

import pytest
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mirasol import Mirasol, MirasolConfig
from mirasol.perf import random_batch
from mirasol.cost import memory_plan, model_flops, parameter_counts


@pytest.mark.parametrize("combiner", ["transformer", "ttm"])
@pytest.mark.parametrize("questions_per_clip", [1, 4])
def test_flop_formula_equals_torch_flop_counter(combiner, questions_per_clip):
    """The written-down formula gives exactly the FLOPs torch counts in the real forward pass.
    SDPA's math backend spells attention out as matmuls, which the counter sees (it does not count
    the fused CPU kernel)."""
    cfg = MirasolConfig.preset("tiny", combiner=combiner, num_chunks=3, text_layers=3)
    model = Mirasol(cfg).train()
    batch = random_batch(cfg, 8, text_len=20, questions_per_clip=questions_per_clip)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(batch["video"], batch["audio"], batch["input_ids"], batch["labels"], media_index=batch["media_index"])
    assert model_flops(cfg, 20, questions_per_clip)["forward"] * 8 == counter.get_total_flops()


def test_parameter_counts_match_the_model():
    cfg = MirasolConfig.preset("tiny", combiner="ttm")
    counts = parameter_counts(cfg)
    assert counts["total"] == Mirasol(cfg).num_parameters()["total"]
    assert parameter_counts(MirasolConfig.preset("mirasol3b"))["total"] > 3e9  # counted on meta: no memory


def test_memory_plan_shards_states_and_checkpointing_saves_activations():
    cfg = MirasolConfig.preset("base")
    counts = parameter_counts(cfg)
    one = memory_plan(cfg, "ddp", 1, 4, counts=counts)
    eight = memory_plan(cfg, "fsdp", 8, 4, counts=counts)
    assert one.weights == 4 * counts["total"] and one.optimizer == 8 * counts["total"]
    assert eight.weights == one.weights / 8 and eight.optimizer == one.optimizer / 8
    assert eight.activations == one.activations
    ac = memory_plan(cfg, "fsdp", 8, 4, checkpointing=True, counts=counts)
    assert ac.activations < 0.3 * eight.activations
