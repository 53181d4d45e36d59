"""Pretrained parts from local Hugging Face model folders (needs the `hf` extra: transformers, peft).

    model.text_backbone: /models/gpt2        a causal LM folder (config.json + safetensors + tokenizer.json)
    model.video_backbone: /models/vit-base   an image encoder (ViT, CLIP, SigLIP; the vision tower is used)
    model.audio_backbone: /models/whisper    a Whisper model (its encoder is used)
    train.freeze: [text_backbone, ...]       those backbones' own weights stay as loaded
    train.lora: {r: 8, alpha: 16, dropout: 0.05, targets: [c_attn]}   LoRA adapters (peft) in the text backbone

Folders are read with `local_files_only=True`: nothing is ever downloaded. A saved model records
each backbone's folder and a SHA-256 of its weight files (backbones.json) and only the weights
training changed; loading it checks the hash. The core package never imports this module.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from mirasol.config import BACKBONE_KEYS, ConfigError, MirasolConfig, require_hf
from mirasol.errors import MirasolError


class BackboneError(MirasolError, ValueError):
    """A saved model's backbone folder is missing or its weights changed (the message names it)."""

WEIGHT_SUFFIXES = (".safetensors", ".bin")


def backbone_folder(path: str | Path, key: str) -> Path:
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(f"config key 'model.{key}': {folder} is not a local Hugging Face model folder (no "
                          "config.json there). Download the model once, e.g. `huggingface-cli download gpt2 "
                          "--local-dir /models/gpt2`, and point the key at that folder.")
    if not weight_files(folder):
        raise ConfigError(f"config key 'model.{key}': {folder} has no weight files (*.safetensors or *.bin)")
    return folder


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def weights_hash(folder: str | Path) -> str:
    """SHA-256 over the folder's weight files (names and bytes, in name order)."""
    digest = hashlib.sha256()
    for file in weight_files(Path(folder)):
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def _hf_config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


# --- config --------------------------------------------------------------------------------------
def resolve_config(cfg: MirasolConfig) -> MirasolConfig:
    """Fill in what the backbone folders decide: with a text backbone the vocabulary and special
    token ids (its tokenizer; pad and sep are new tokens after its vocabulary, bos/eos are its
    own), with an audio backbone Whisper's features and its number of mel bins."""
    changes: dict = {}
    if cfg.text_backbone:
        folder = backbone_folder(cfg.text_backbone, "text_backbone")
        if not (folder / "tokenizer.json").is_file():
            raise ConfigError(f"config key 'model.text_backbone': {folder} has no tokenizer.json (a fast "
                              "tokenizer); save one with AutoTokenizer.from_pretrained(folder).save_pretrained(folder)")
        hf = _hf_config(folder)
        hf = hf.get("text_config", hf)
        vocab = int(hf["vocab_size"])
        first = lambda v: v[0] if isinstance(v, list) else v  # noqa: E731  (some configs list several eos)
        bos, eos = first(hf.get("bos_token_id")), first(hf.get("eos_token_id"))
        extra = [vocab, vocab + 1]  # pad, sep
        if eos is None:
            eos = vocab + len(extra)
            extra.append(eos)
        if bos is None:
            bos = eos  # like GPT-2's <|endoftext|>: the token that separates documents starts one
        changes.update(vocab_size=vocab + len(extra), pad_token_id=extra[0], sep_token_id=extra[1],
                       bos_token_id=int(bos), eos_token_id=int(eos))
    if cfg.audio_backbone:
        folder = backbone_folder(cfg.audio_backbone, "audio_backbone")
        hf = _hf_config(folder)
        if hf.get("model_type") != "whisper":
            raise ConfigError(f"config key 'model.audio_backbone': {folder} is a {hf.get('model_type')!r} model; "
                              "only Whisper encoders are supported as audio backbones so far")
        if (cfg.sample_rate, cfg.audio_hop_ms, cfg.audio_win_ms) != (16000, 10.0, 25.0):
            raise ConfigError("config key 'model.audio_backbone': Whisper needs sample_rate=16000, audio_hop_ms=10 "
                              f"and audio_win_ms=25 (got {cfg.sample_rate}, {cfg.audio_hop_ms}, {cfg.audio_win_ms})")
        changes.update(audio_features="whisper", n_mels=int(hf.get("num_mel_bins", 80)))
        if changes["n_mels"] % cfg.audio_patch_mels:  # the built-in audio patches are unused; keep the config valid
            changes["audio_patch_mels"] = changes["n_mels"]
    return cfg.replace(**changes) if changes else cfg


# --- building ------------------------------------------------------------------------------------
def load_text_backbone(path: str | Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)


def load_image_backbone(path: str | Path):
    """(vision encoder, image_mean, image_std). A CLIP / SigLIP folder gives its vision tower."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    encoder = getattr(model, "vision_model", model)
    if not hasattr(encoder.config, "patch_size"):
        encoder.config = model.config.vision_config
    mean, std = [0.5] * 3, [0.5] * 3
    processor = Path(path) / "preprocessor_config.json"
    if processor.is_file():
        pre = json.loads(processor.read_text())
        mean, std = pre.get("image_mean", mean), pre.get("image_std", std)
    return encoder, mean, std


def load_audio_backbone(path: str | Path):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(path), local_files_only=True, dtype=torch.float32).get_encoder()


def load_backbones(cfg: MirasolConfig) -> tuple[dict, dict]:
    """The pretrained parts cfg names, loaded from their folders and wrapped for Mirasol
    ({"text_decoder": ..., "video_encoder": ..., "audio_encoder": ...}), and what a saved copy needs
    to find them again (each folder and the SHA-256 of its weights). `Mirasol.build` calls this."""
    from mirasol.model.backbones import ImageBackbone, LMDecoder, WhisperBackbone

    require_hf("config keys model.text_backbone / video_backbone / audio_backbone")
    parts, info = {}, {}
    for key in BACKBONE_KEYS:
        if getattr(cfg, key):
            folder = backbone_folder(getattr(cfg, key), key)
            info[key] = {"path": str(folder.resolve()), "sha256": weights_hash(folder)}
    if cfg.text_backbone:
        parts["text_decoder"] = LMDecoder(cfg, load_text_backbone(cfg.text_backbone))
    if cfg.video_backbone:
        parts["video_encoder"] = ImageBackbone(cfg, *load_image_backbone(cfg.video_backbone))
    if cfg.audio_backbone:
        parts["audio_encoder"] = WhisperBackbone(cfg, load_audio_backbone(cfg.audio_backbone))
    return parts, info


def apply_freeze_and_lora(model, freeze=(), lora: dict | None = None) -> None:
    modules = {key: model.get_submodule(prefix) for key, prefix in model.BACKBONES.items() if getattr(model.cfg, key)}
    for key in freeze:
        if key not in modules:
            raise ConfigError(f"config key 'train.freeze': {key} is not set in the model config (model.{key})")
        modules[key].requires_grad_(False)
    if lora:
        from peft import LoraConfig, inject_adapter_in_model

        for key in lora.get("parts", ["text_backbone"]):
            if key not in modules:
                raise ConfigError(f"config key 'train.lora': {key} is not set in the model config (model.{key})")
            config = LoraConfig(r=int(lora.get("r", 8)), lora_alpha=float(lora.get("alpha", 16)),
                                lora_dropout=float(lora.get("dropout", 0.0)), target_modules=list(lora["targets"]))
            try:
                inject_adapter_in_model(config, modules[key])
            except ValueError as err:
                raise ConfigError(f"config key 'train.lora.targets': {err}") from None
            for name, p in modules[key].named_parameters():  # the backbone's own weights stay as loaded
                p.requires_grad_("lora_" in name)


def saved_backbone_settings(cfg: MirasolConfig, path: str | Path) -> tuple[list, dict | None]:
    """The freeze / LoRA settings a saved model was trained with (its backbones.json), after checking
    that every backbone folder it names is still there with the same weights (SHA-256)."""
    path = Path(path)
    record = path / "backbones.json"
    if not record.is_file():
        raise FileNotFoundError(f"{record} not found: {path} names pretrained backbones but not their hashes")
    info = json.loads(record.read_text())
    for key in BACKBONE_KEYS:
        if getattr(cfg, key):
            folder = Path(getattr(cfg, key)).expanduser()
            saved = info.get(key, {})
            if not (folder / "config.json").is_file():
                raise BackboneError(f"{path} was trained on the {key} in {folder}, which is missing; put the same "
                                        f"model folder back there (weights sha256 {saved.get('sha256', '?')[:16]}...)")
            digest = weights_hash(folder)
            if saved.get("sha256") != digest:
                raise BackboneError(f"{path} was trained on the {key} in {folder}, but its weights have changed since "
                                 f"(sha256 {digest[:16]}... instead of {saved.get('sha256', '?')[:16]}...); "
                                 "restore the original model files")
    return list(info.get("freeze", ())), info.get("lora")


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters, tied ones once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
