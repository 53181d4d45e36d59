"""Run configuration: model (MirasolConfig) + training + data settings, from YAML with dotted
overrides, validated completely before any work starts.

    model:                # a preset and/or any MirasolConfig key
      preset: tiny
      combiner: ttm
    train:
      lr: 1.0e-3
    data:
      workers: 2

Overrides on the command line: `train.lr=3e-4 model.combiner=ttm data.cache=/tmp/cache`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mirasol.choices import PRECISIONS, STORES, STRATEGIES
from mirasol.config import BACKBONE_KEYS, PRESETS, ConfigError, MirasolConfig, require_hf


def _check_keys(section: str, values: dict, cls) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            # a known key the typed one starts with (lrate -> lr) first, else the closest spelling
            prefix = sorted((k for k in known if key.startswith(k)), key=len, reverse=True)
            close = prefix[:1] or difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.5)
            hint = f"; did you mean '{section}.{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{section}.{key}'{hint} (valid: {', '.join(sorted(known))})")


@dataclass
class TrainConfig:
    batch_size: int = 32  # global batch per optimizer step (split over processes and accumulation)
    grad_accum: int = 1  # micro-batches per optimizer step
    # Rows about the same clip kept together in a batch (up to this many), so the clip's media is
    # encoded once for all of them: with many questions per clip, much cheaper steps.
    questions_per_clip: int = 1
    max_steps: int = 1000
    lr: float = 1e-3
    # The text decoder's lr is lr x text_lr_scale. On the built-in world the decoder's readout of
    # the memory is what learns slowest (benchmarks/direction-plateau.md).
    text_lr_scale: float = 1.0
    min_lr_ratio: float = 0.05  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.98)
    grad_clip: float = 1.0
    precision: str = "auto"  # auto (bf16 on a GPU that supports it, else fp32) | fp32 | bf16
    seed: int = 0
    log_every: int = 10
    eval_every: int = 200  # validation every N steps (and at the end); 0 = only at the end
    eval_samples: int = 200  # validation samples answered by greedy decoding for accuracy
    save_every: int = 200
    keep_checkpoints: int = 2
    plots: bool = True
    # Several processes (torchrun): ddp replicates the model on every process; fsdp shards weights,
    # gradients and AdamW states over them (FSDP2 `fully_shard` per transformer block), with
    # checkpoints written by torch.distributed.checkpoint. One process: ddp = plain training.
    strategy: str = "ddp"
    activation_checkpointing: bool = False  # recompute each transformer block in the backward: less memory, ~1.3x compute
    compile: bool = False  # torch.compile the model (first steps are slow while it compiles)
    save_consolidated: bool = True  # fsdp: one model.safetensors at every save (False: only at the end)
    # Pretrained backbones (model.*_backbone): which keep their loaded weights, and LoRA adapters
    # (peft) {r, alpha, dropout, targets: [module names], parts: [text_backbone]}.
    freeze: list = field(default_factory=list)
    lora: dict | None = None

    def validate(self) -> None:
        for key in ("batch_size", "grad_accum", "questions_per_clip", "max_steps", "log_every", "keep_checkpoints",
                    "save_every"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"config key 'train.{key}': must be a positive integer, got {value!r}")
        for key in ("warmup_steps", "eval_every", "eval_samples", "seed"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"config key 'train.{key}': must be an integer >= 0, got {value!r}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"config key 'train.batch_size': batch_size={self.batch_size} is not divisible by "
                              f"grad_accum={self.grad_accum}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ConfigError(f"config key 'train.lr': must be > 0, got {self.lr!r}")
        if isinstance(self.text_lr_scale, bool) or not (isinstance(self.text_lr_scale, (int, float)) and self.text_lr_scale > 0):
            raise ConfigError(f"config key 'train.text_lr_scale': must be > 0, got {self.text_lr_scale!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"config key 'train.min_lr_ratio': must be in [0, 1], got {self.min_lr_ratio}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"config key 'train.precision': must be one of {PRECISIONS}, got {self.precision!r}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"config key 'train.strategy': must be one of {STRATEGIES}, got {self.strategy!r}")
        for key in ("activation_checkpointing", "compile", "save_consolidated", "plots"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"config key 'train.{key}': must be true or false, got {getattr(self, key)!r}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ConfigError("config keys 'train.grad_clip' and 'train.weight_decay' must be >= 0")
        self.betas = tuple(float(b) for b in self.betas)
        backbones = BACKBONE_KEYS
        if not isinstance(self.freeze, (list, tuple)) or any(k not in backbones for k in self.freeze):
            raise ConfigError(f"config key 'train.freeze': must be a list drawn from {list(backbones)}, got {self.freeze!r}")
        self.freeze = list(self.freeze)
        if self.lora is not None:
            known = {"r", "alpha", "dropout", "targets", "parts"}
            if not isinstance(self.lora, dict) or set(self.lora) - known:
                raise ConfigError(f"config key 'train.lora': a mapping with keys {sorted(known)}, got {self.lora!r}")
            targets = self.lora.get("targets")
            if not targets or not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
                raise ConfigError("config key 'train.lora.targets': the LM's module names to adapt, e.g. [c_attn] "
                                  "(GPT-2) or [q_proj, v_proj] (Llama, Qwen2)")
            r = self.lora.get("r", 8)
            if not isinstance(r, int) or r < 1:
                raise ConfigError(f"config key 'train.lora.r': must be a positive integer, got {r!r}")
            if not 0 <= float(self.lora.get("dropout", 0.0)) < 1:
                raise ConfigError("config key 'train.lora.dropout': must be in [0, 1)")
            for part in self.lora.get("parts", ["text_backbone"]):
                if part not in backbones:
                    raise ConfigError(f"config key 'train.lora.parts': {part!r} is not one of {list(backbones)}")


@dataclass
class DataConfig:
    cache: str | None = None  # clip cache folder; default: <train manifest folder>/.mirasol_cache/<media hash>
    workers: int = 0  # DataLoader worker processes (a raw cache needs no decoding: 0 is enough there)
    # clip store: auto (h264 for large frames, raw for small) | raw | h264 | jpeg | none (decode on the fly)
    store: str = "auto"
    prepare_workers: int | None = None  # decoding processes for `prepare` (default: CPU count)
    max_text_len: int | None = None  # default: model.max_text_len
    tokenizer: str | None = None  # an existing tokenizer.json to use instead of training one
    # training from shards: lanes (docs/shards.md); 0 = processes x max(1, workers) at the first start
    shard_lanes: int = 0
    # training from shards: each lane reads its shard through a shuffle buffer of this many samples
    # (their encoded bytes: memory = shard_shuffle x sample size x lanes per process); 0 = written order
    shard_shuffle: int = 16
    # training from shards: their text index (path or URL; `mirasol shard` writes PREFIX-text.jsonl),
    # read by the first start instead of every shard's text; default: read the shards
    shard_text: str | None = None

    def validate(self) -> None:
        if not isinstance(self.workers, int) or self.workers < 0:
            raise ConfigError(f"config key 'data.workers': must be an integer >= 0, got {self.workers!r}")
        if not isinstance(self.shard_lanes, int) or self.shard_lanes < 0:
            raise ConfigError(f"config key 'data.shard_lanes': must be an integer >= 0, got {self.shard_lanes!r}")
        if not isinstance(self.shard_shuffle, int) or self.shard_shuffle < 0:
            raise ConfigError(f"config key 'data.shard_shuffle': must be an integer >= 0, got {self.shard_shuffle!r}")
        if self.store not in STORES:
            raise ConfigError(f"config key 'data.store': must be one of {', '.join(STORES)}, got {self.store!r}")
        if self.tokenizer is not None and not Path(self.tokenizer).exists():
            raise ConfigError(f"config key 'data.tokenizer': {self.tokenizer} does not exist")


@dataclass
class RunConfig:
    model: MirasolConfig = field(default_factory=MirasolConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "train": dataclasses.asdict(self.train),
                "data": dataclasses.asdict(self.data)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "RunConfig":
        raw = dict(raw or {})
        for key in raw:
            if key not in ("model", "train", "data"):
                raise ConfigError(f"unknown config section '{key}' (valid: model, train, data)")
        model_raw = dict(raw.get("model") or {})
        preset = model_raw.pop("preset", None)
        model = MirasolConfig.preset(preset, **model_raw) if preset else MirasolConfig.from_dict(model_raw)
        train_raw = {k: _number(v) for k, v in (raw.get("train") or {}).items()}
        data_raw = dict(raw.get("data") or {})
        _check_keys("train", train_raw, TrainConfig)
        _check_keys("data", data_raw, DataConfig)
        train, data = TrainConfig(**train_raw), DataConfig(**data_raw)
        train.validate()
        data.validate()
        for key in train.freeze + (train.lora or {}).get("parts", ["text_backbone"] if train.lora else []):
            if getattr(model, key) is None:
                raise ConfigError(f"config key 'train.freeze'/'train.lora' names {key}, but model.{key} is not set")
        if any(getattr(model, k) for k in BACKBONE_KEYS):
            require_hf("config keys model.text_backbone / video_backbone / audio_backbone")
            if model.text_backbone and data.tokenizer:
                raise ConfigError("config key 'data.tokenizer': a text backbone brings its own tokenizer; leave it unset")
        return cls(model, train, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form section.key=value (e.g. train.lr=3e-4)")
    key, value = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"override '{text}': key must be section.key, e.g. train.lr or model.combiner")
    return parts, _number(yaml.safe_load(value)) if value.strip() else None


def _number(value: Any) -> Any:
    """YAML 1.1 reads '3e-4' as a string; numbers written that way are numbers."""
    if isinstance(value, str):
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
    return value


CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def config_keys_help(width: int = 96) -> str:
    """Every config key with its default, for `mirasol train --help`."""
    import textwrap

    lines = ["config keys (YAML sections, or dotted overrides such as train.lr=3e-4), with defaults:"]
    for section, cls in (("train", TrainConfig), ("data", DataConfig)):
        keys = ", ".join(f"{f.name}={_default(f)}" for f in dataclasses.fields(cls))
        lines += textwrap.wrap(f"{section}: {keys}", width, initial_indent="  ", subsequent_indent="    ")
    keys = ", ".join(f.name for f in dataclasses.fields(MirasolConfig))
    lines += textwrap.wrap(f"model: preset ({', '.join(PRESETS)}) and any of: {keys}", width,
                           initial_indent="  ", subsequent_indent="    ")
    names = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
    lines.append(f"packaged configs (--config NAME): {names}; their YAML is in {CONFIG_DIR}")
    return "\n".join(lines)


def _default(f: dataclasses.Field) -> Any:
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return list(value) if isinstance(value, tuple) else value


def resolve_config_path(path: str | Path) -> Path:
    """A file or run directory as given, else the name of a packaged config (`tiny` -> configs/tiny.yaml)."""
    path = Path(path)
    if not path.exists() and (CONFIG_DIR / f"{path.name}.yaml").exists() and len(path.parts) == 1:
        return CONFIG_DIR / f"{path.name}.yaml"
    return path


def load_run_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """YAML file (or a run directory's config.json) + dotted overrides -> validated RunConfig."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = resolve_config_path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = (json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())) or {}
        except (yaml.YAMLError, json.JSONDecodeError) as err:
            raise ConfigError(f"{path}: not valid YAML/JSON: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping with sections model/train/data")
        if "model" not in raw and "train" not in raw and "data" not in raw:
            raw = {"model": raw}  # a bare model config (e.g. a saved model's config.json)
        for section in ("model", "train", "data"):
            if raw.get(section) is not None and not isinstance(raw[section], dict):
                raise ConfigError(f"{path}: section '{section}' must be a mapping")
    for text in overrides:
        (section, key), value = parse_override(text)
        if section not in ("model", "train", "data"):
            raise ConfigError(f"override '{text}': unknown section '{section}' (valid: model, train, data)")
        raw.setdefault(section, {})
        raw[section] = dict(raw[section] or {})
        raw[section][key] = value
    try:
        return RunConfig.from_dict(raw)
    except TypeError as err:
        raise ConfigError(f"{path}: {err}") from None


def load_model_config(path: str | Path | None) -> MirasolConfig:
    """The model/media config of a YAML file or run directory; the tiny preset when None."""
    if path is None:
        return MirasolConfig.preset("tiny")
    return load_run_config(path).model


# Model settings a resumed run may change. None of them changes a parameter's shape (the tests
# build the model with each changed and compare), and `num_chunks` among them is what lets a run
# trained on short clips go on over long ones (docs/streaming.md, "Training for long videos").
RESUMABLE_MODEL_KEYS = ("num_chunks", "clip_window", "mask_ratio", "latent_loss", "latent_loss_weight",
                        "text_loss_weight", "av_contrastive_temperature", "dropout", "missing_audio", "resize")


def resume_changes(trained: RunConfig, now: RunConfig, checkpoint: str | Path) -> list[str]:
    """The settings `now` changes against those the checkpoint was trained with, as
    'section.key: old -> new'. A changed model setting outside RESUMABLE_MODEL_KEYS raises a
    ConfigError naming it: the checkpoint's weights would not fit, or would mean something else."""
    changes = []
    old, new = trained.to_dict(), now.to_dict()
    for section in ("model", "train", "data"):
        for key in sorted(set(old[section]) | set(new[section])):
            a, b = old[section].get(key), new[section].get(key)
            if a == b:
                continue
            if section == "model" and key not in RESUMABLE_MODEL_KEYS:
                raise ConfigError(
                    f"config key 'model.{key}': {checkpoint} was trained with {a!r}, this command gives {b!r}; "
                    f"a resumed run keeps its model, so drop that override (or start a new run with another "
                    f"--out). Model settings a resume may change: {', '.join(RESUMABLE_MODEL_KEYS)}")
            changes.append(f"{section}.{key}: {a!r} -> {b!r}")
    return changes
