"""Several processes: the process group, and sharding the model with FSDP2.

`train.strategy: ddp` replicates the model (DistributedDataParallel, in the loop). `fsdp` shards it
with `torch.distributed.fsdp.fully_shard`: every transformer block is one unit (its weights are
all-gathered just before it runs and freed after), the rest of the model (embeddings, heads,
norms, projections) is the root unit. Gradients are reduce-scattered, so each process keeps
1/N of the weights, gradients and AdamW states. With bf16 the all-gathered weights are bf16 and
gradients are reduced in fp32; the sharded master weights and optimizer states stay fp32.
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import nn

from mirasol.config import BACKBONE_KEYS, ConfigError
from mirasol.model.layers import Block


def setup_distributed(strategy: str = "ddp") -> tuple[int, int, torch.device]:
    """(rank, world size, device). torchrun's WORLD_SIZE > 1 starts a process group (NCCL on GPU,
    gloo on CPU); fsdp also needs one with a single process, then made in memory (no torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available() and local >= torch.cuda.device_count():
        # Checked before joining the process group, so that no process is left waiting for this one.
        n = torch.cuda.device_count()
        raise ConfigError(f"process LOCAL_RANK={local} has no GPU of its own: this machine shows {n} CUDA "
                          f"device(s). Start at most {n} process(es) per machine (torchrun --nproc_per_node {n}), "
                          "or hide the GPUs (CUDA_VISIBLE_DEVICES=) to run the processes on the CPU over gloo")
    if not dist.is_initialized():
        if world > 1 or (strategy == "fsdp" and "MASTER_ADDR" in os.environ):
            dist.init_process_group(backend)
        elif strategy == "fsdp":
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks that become FSDP units. The TTM combiner's blocks run once per chunk
    in one forward; they stay in the root unit (one all-gather per step instead of one per chunk)."""
    reused = set()
    if hasattr(model, "combiner") and hasattr(model.combiner, "process"):
        reused = {id(m) for m in model.combiner.process.modules()}
    return [m for m in model.modules() if isinstance(m, Block) and id(m) not in reused]


def shard_model(model: nn.Module, device: torch.device, bf16: bool) -> nn.Module:
    """FSDP2 in place: fully_shard each block, then the model. Build the optimizer afterwards
    (the parameters become DTensor shards)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    kwargs = {"mesh": mesh}
    if bf16:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in shard_units(model):
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every process takes part; rank 0 gets the whole model's state on the CPU, the others {}."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def unsharded_copy(run_cfg, state: dict[str, torch.Tensor], device: torch.device) -> nn.Module:
    """A plain (unsharded) model holding `state` (full_state_dict's), on rank 0: for validation and
    for the consolidated model.safetensors. Built by `Mirasol.build` (backbones, freeze and LoRA as in
    training, so it saves as the trained model would) under a forked RNG, so that making it does
    not move the training RNG. A plain config is built on the meta device (no second allocation);
    one with pretrained backbones is built on the CPU, since Hugging Face modules keep buffers that
    are not in a state dict."""
    from mirasol.model import Mirasol

    plain = not any(getattr(run_cfg.model, key) for key in BACKBONE_KEYS)
    with torch.random.fork_rng(devices=[]), (torch.device("meta") if plain else nullcontext()):
        copy = Mirasol.build(run_cfg.model, run_cfg.train.freeze, run_cfg.train.lora)
    copy.load_state_dict(state, assign=plain)
    return copy.to(device)
