"""What a training step costs, counted analytically from the config: FLOPs and memory per GPU.

FLOPs (`model_flops`). A matmul of [n, a] by [a, b] is 2·n·a·b FLOPs; a training step is 3x the
forward pass (the backward computes two matmuls per forward matmul: gradients of inputs and of
weights). Activation-checkpointing recomputation is not counted (the MFU convention: useful model
FLOPs only). Attention is counted over the full Lq x Lk score matrix, masked or not, as SDPA's
kernels compute it. Per transformer block over L tokens of width d (mlp ratio r):

    linear layers   2·L·(4 + 2r)·d²          q, k, v, out (4d²) and the MLP (2r·d²)
    attention       4·L·Lk·d                 Q·Kᵀ and P·V, Lk keys (Lk = L for self-attention)

and with cross-attention to M memory tokens of width c (text decoder blocks) add
2·L·2·d² (q, out) + 4·L·M·d, and 2·M·2·c·d for the memory's keys and values (once per clip:
a clip's questions share them).
Per clip of T chunks (nv video, na audio tokens per chunk, m combiner tokens):

    video     T·[2·nv·(t·3·p²)·dv + Lv·block(nv, dv)] + 2·T·nv·dv·D      (patch embedding, blocks, projection)
    audio     T·[2·na·(pm·pf)·da + La·block(na, da)] + 2·T·na·da·D
    combiner  T·Lc·block(nv + na + m, D)                                 (transformer combiner)
              TTM: read/write/emit TokenLearners + Lc·block(r, D) per chunk
    AV model  Lav·block(T·m, D) + 2·2·(T-1)·m·D²                          (blocks, latent predictor)
    memory    Lt·2·(T·m)·2·D·dt                                          (decoder's cross-attention k, v)

and per text row of L tokens: Lt·cross_block(L, dt; M = T·m, c = D) + 2·L·V·dt (tied logits at
every position, as `mirasol bench step` runs it; the training loop scores only answer positions).
With k questions per clip the clip's cost is shared by its k rows.
`tests/test_cost.py` checks this count against torch's FlopCounterMode on the real model.

Memory (`memory_plan`): bytes per GPU of fp32 weights, gradients, AdamW states (exp_avg,
exp_avg_sq) and the activations a step keeps for its backward, for `ddp` (everything replicated)
or `fsdp` (weights, gradients and optimizer states divided by the number of GPUs, plus the
unsharded copies of the units being computed). See `activation_bytes` for the activations model.
"""

from __future__ import annotations

from dataclasses import dataclass

from mirasol.config import MirasolConfig

GIB = 2 ** 30


def _block(tokens: int, dim: int, r: float, keys: int | None = None) -> float:
    keys = tokens if keys is None else keys
    return 2 * tokens * (4 + 2 * r) * dim ** 2 + 4 * tokens * keys * dim


def _cross_block(tokens: int, dim: int, r: float, memory: int) -> float:
    """A decoder block with cross-attention, without the memory's k, v (counted per clip)."""
    return _block(tokens, dim, r) + 2 * tokens * 2 * dim ** 2 + 4 * tokens * memory * dim


def _token_learner(inputs: int, outputs: int, dim: int) -> float:
    return 2 * inputs * (dim * dim + dim * outputs) + 2 * inputs * outputs * dim


def media_flops(cfg: MirasolConfig) -> dict[str, float]:
    """Forward FLOPs computed once per clip, by part: the audio-video model and the text decoder's
    keys and values of its memory."""
    t, r, d = cfg.num_chunks, cfg.mlp_ratio, cfg.av_dim
    nv, na, m = cfg.video_tokens_per_chunk, cfg.audio_tokens_per_chunk, cfg.combiner_tokens
    video = t * (2 * nv * cfg.tubelet_size * 3 * cfg.patch_size ** 2 * cfg.video_dim
                 + cfg.video_layers * _block(nv, cfg.video_dim, r)) + 2 * t * nv * cfg.video_dim * d
    audio = t * (2 * na * cfg.audio_patch_mels * cfg.audio_patch_frames * cfg.audio_dim
                 + cfg.audio_layers * _block(na, cfg.audio_dim, r)) + 2 * t * na * cfg.audio_dim * d
    if cfg.combiner == "ttm":
        k, rd = cfg.ttm_memory_tokens, cfg.ttm_read_tokens
        per_chunk = (_token_learner(k + nv + na, rd, d) + cfg.combiner_layers * _block(rd, d, r)
                     + _token_learner(k + nv + na + rd, k, d) + (_token_learner(rd, m, d) if rd != m else 0))
        combiner = t * per_chunk
    else:
        combiner = t * cfg.combiner_layers * _block(nv + na + m, d, r)
    av = cfg.av_layers * _block(t * m, d, r) + 2 * 2 * (t - 1) * m * d * d
    if cfg.chunk_delta:  # the difference MLP (two d x d layers) on every chunk token
        av += 2 * 2 * t * m * d * d
    memory_kv = cfg.text_layers * 2 * t * m * 2 * d * cfg.text_dim
    return {"video": video, "audio": audio, "combiner": combiner, "av_model": av, "memory_kv": memory_kv}


def text_flops(cfg: MirasolConfig, text_len: int) -> float:
    """Forward FLOPs of the text decoder for one row of text_len tokens (its clip's memory k, v
    aside: `media_flops`)."""
    memory = cfg.num_chunks * cfg.combiner_tokens
    blocks = cfg.text_layers * _cross_block(text_len, cfg.text_dim, cfg.mlp_ratio, memory)
    return blocks + 2 * text_len * cfg.vocab_size * cfg.text_dim


def model_flops(cfg: MirasolConfig, text_len: int, questions_per_clip: int = 1) -> dict[str, float]:
    """FLOPs per sample (one text row): forward, and training (3x forward)."""
    media = sum(media_flops(cfg).values())
    forward = media / questions_per_clip + text_flops(cfg, text_len)
    return {"forward": forward, "train": 3 * forward, "media_forward_per_clip": media,
            "text_forward_per_row": text_flops(cfg, text_len)}


# ------------------------------------------------------------------------------------------------
# memory


def parameter_counts(cfg: MirasolConfig) -> dict[str, int]:
    """Total parameters and those of the largest transformer block (an FSDP unit), counted on the
    meta device (no memory)."""
    import torch

    from mirasol.model import Mirasol
    from mirasol.model.layers import Block

    with torch.device("meta"):
        model = Mirasol(cfg)
    blocks = [sum(p.numel() for p in b.parameters()) for b in model.modules() if isinstance(b, Block)]
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "largest_block": max(blocks), "blocks": sum(blocks), "root": total - sum(blocks)}


def _block_act(tokens: float, dim: int, r: float, bf16: bool, cross: bool = False) -> float:
    """Bytes a pre-norm block keeps for its backward, per token. fp32: every saved tensor is 4 bytes:
    2 residual-stream inputs + 2 LayerNorm outputs, q, k, v, attention output, MLP hidden before and
    after GELU (2r) = (8 + 2r)·d floats (+4·d with cross-attention: its norm in/out, q, output).
    bf16 autocast: residual stream and LayerNorm outputs stay fp32 (4·4·d bytes), the matmul inputs
    are bf16 casts (2 LayerNorm casts) and matmul outputs are bf16: (16 + 2·2 + 2·(4 + 2r))·d bytes."""
    if bf16:
        per = (16 + 4 + 2 * (4 + 2 * r)) * dim + (6 + 2 * 4) * dim * cross
    else:
        per = 4 * (8 + 2 * r) * dim + 4 * 4 * dim * cross
    return tokens * per


def activation_bytes(cfg: MirasolConfig, text_len: int, questions_per_clip: int = 1, bf16: bool = False,
                     checkpointing: bool = False) -> dict[str, float]:
    """Bytes of activations kept for the backward per text row (its clip's share included).
    Attention score matrices are not counted (flash / memory-efficient SDPA kernels do not keep
    them; CPU kernels with a mask may, which the CPU check shows). With activation checkpointing
    only each block's input stays (4·d bytes per token) plus one block's full activations while
    it is recomputed (`recompute_peak`)."""
    t, r = cfg.num_chunks, cfg.mlp_ratio
    nv, na, m = cfg.video_tokens_per_chunk, cfg.audio_tokens_per_chunk, cfg.combiner_tokens
    combiner_tokens = cfg.ttm_read_tokens if cfg.combiner == "ttm" else nv + na + m
    stacks = [  # (tokens per clip, width, layers, rows sharing the clip, cross-attention)
        (t * nv, cfg.video_dim, cfg.video_layers, questions_per_clip, False),
        (t * na, cfg.audio_dim, cfg.audio_layers, questions_per_clip, False),
        (t * combiner_tokens, cfg.av_dim, cfg.combiner_layers, questions_per_clip, False),
        (t * m, cfg.av_dim, cfg.av_layers, questions_per_clip, False),
        (text_len, cfg.text_dim, cfg.text_layers, 1, True),
    ]
    full = sum(layers * _block_act(tokens, dim, r, bf16, cross) / share
               for tokens, dim, layers, share, cross in stacks)
    kept = sum(layers * tokens * dim * 4 / share for tokens, dim, layers, share, _ in stacks)
    recompute = max(_block_act(tokens, dim, r, bf16, cross) / share for tokens, dim, _, share, cross in stacks)
    # outside the blocks: media input, patch embeddings, cross-attention k/v of the memory per text
    # layer, logits (bf16 or fp32) + their fp32 copy and softmax for the loss
    media = (t * cfg.frames_per_chunk * 3 * cfg.image_size ** 2 + cfg.n_mels * cfg.audio_frames) * 4
    media += 2 * 4 * t * (nv * cfg.video_dim + na * cfg.audio_dim + (nv + na) * cfg.av_dim)
    memory_kv = cfg.text_layers * 2 * t * m * cfg.text_dim * (2 if bf16 else 4)
    logits = text_len * cfg.vocab_size * ((2 if bf16 else 4) + 4 + 4)
    other = media / questions_per_clip + memory_kv + logits
    blocks = kept + recompute if checkpointing else full
    return {"blocks": blocks, "other": other, "total": blocks + other, "recompute_peak": recompute}


@dataclass
class MemoryPlan:
    weights: float
    gradients: float
    optimizer: float
    gathered: float  # fsdp: unsharded copies of the root and the units being computed / prefetched
    activations: float
    batch_per_gpu: int

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.gathered + self.activations

    def as_dict(self) -> dict:
        return {**{k: getattr(self, k) for k in ("weights", "gradients", "optimizer", "gathered", "activations",
                                                 "batch_per_gpu")}, "total": self.total}


def memory_plan(cfg: MirasolConfig, strategy: str = "ddp", gpus: int = 1, batch_per_gpu: int = 1,
                checkpointing: bool = False, bf16: bool = True, text_len: int = 32, questions_per_clip: int = 1,
                counts: dict | None = None) -> MemoryPlan:
    """Bytes per GPU of one training step (the peak, at the end of the forward / start of the backward).

    weights    fp32 master weights: 4·P (ddp) or 4·P/N (fsdp)
    gradients  fp32: ddp 4·P for .grad plus 4·P of DDP's bucket copies (one process: no buckets);
               fsdp 4·P/N sharded
    optimizer  AdamW exp_avg + exp_avg_sq: 8·P or 8·P/N
    gathered   ddp + bf16: autocast's bf16 copy of every weight (2·P) kept through the forward;
               fsdp: the root unit unsharded (2 or 4 bytes per weight) and two block units (the
               one computing, the one prefetched), plus the largest unit's unsharded fp32 gradient
    activations batch_per_gpu x activation_bytes(...)
    """
    counts = counts or parameter_counts(cfg)
    p = counts["total"]
    wbytes = 2 if bf16 else 4
    if strategy == "fsdp":
        weights, grads, optim = 4 * p / gpus, 4 * p / gpus, 8 * p / gpus
        gathered = wbytes * (counts["root"] + 2 * counts["largest_block"]) + 4 * counts["largest_block"]
        if gpus == 1:  # one process: nothing is sharded, the gathered copies are the weights themselves in fp32
            gathered = 0 if not bf16 else wbytes * (counts["root"] + 2 * counts["largest_block"])
    elif strategy == "ddp":
        weights, grads, optim = 4 * p, 4 * p * (2 if gpus > 1 else 1), 8 * p
        gathered = 2 * p if bf16 else 0
    else:
        raise ValueError(f"strategy must be ddp or fsdp, got {strategy!r}")
    act = activation_bytes(cfg, text_len, questions_per_clip, bf16, checkpointing)["total"] * batch_per_gpu
    return MemoryPlan(weights, grads, optim, gathered, act, batch_per_gpu)


def max_batch(cfg: MirasolConfig, gpu_bytes: float, **kwargs) -> int:
    """The largest batch per GPU whose plan fits in gpu_bytes (0: not even one sample)."""
    counts = parameter_counts(cfg)
    fixed = memory_plan(cfg, batch_per_gpu=0, counts=counts, **kwargs).total
    per = memory_plan(cfg, batch_per_gpu=1, counts=counts, **kwargs).activations
    return max(0, int((gpu_bytes - fixed) // per))
