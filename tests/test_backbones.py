"""Pretrained backbones from local Hugging Face folders: tiny random GPT-2 / Llama / Qwen2 / ViT / Whisper
models saved to temporary folders (no network), used through the model, `mirasol train` and
`mirasol ask`. Needs the `hf` extra (CI installs it); the first test checks the core without it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mirasol.config import MirasolConfig

from conftest import media_batch

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_core_imports_and_builds_without_transformers():
    code = ("import sys; sys.modules['transformers'] = None; sys.modules['peft'] = None\n"
            "import mirasol, mirasol.model, mirasol.model.backbones, mirasol.data, mirasol.media, mirasol.run_dir\n"
            "import mirasol.train.loop, mirasol.eval.evaluate, mirasol.ask, mirasol.cli\n"
            "from mirasol import Mirasol, MirasolConfig\n"
            "Mirasol(MirasolConfig.preset('tiny'))\n"
            "from mirasol.run_config import load_run_config\n"
            "try:\n    load_run_config('tiny', ['model.text_backbone=/x'])\n"
            "except Exception as e:\n    print(e)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "hf" in result.stdout and "pip install" in result.stdout  # names the extra to install


transformers = pytest.importorskip("transformers")  # a guard only: CI installs the `hf` extra
pytest.importorskip("peft")

from mirasol.model import Mirasol  # noqa: E402
from mirasol.model.pretrained import resolve_config, weights_hash  # noqa: E402


def _tokenizer(folder: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    words = "what shape color is the object square circle triangle red green blue moves left right up down beeps"
    tok.train_from_iterator([words, "describe the clip", "which label fits"] * 5, trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return tok.get_vocab_size()


def _save(model, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2")
    vocab = _tokenizer(folder)
    torch.manual_seed(1)
    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                  bos_token_id=0, eos_token_id=0)
    return _save(transformers.GPT2LMHeadModel(cfg), folder)


def _llama_like(folder, config_cls, model_cls, seed: int, tie: bool):
    """A 2-layer Llama-family LM (grouped-query attention, RoPE) saved to `folder` with a tokenizer."""
    vocab = _tokenizer(folder)
    torch.manual_seed(seed)
    cfg = config_cls(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                     bos_token_id=0, eos_token_id=0, tie_word_embeddings=tie)
    return _save(model_cls(cfg), folder)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return _llama_like(tmp_path_factory.mktemp("llama"), transformers.LlamaConfig, transformers.LlamaForCausalLM,
                       seed=2, tie=False)


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    return _llama_like(tmp_path_factory.mktemp("qwen2"), transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
                       seed=5, tie=True)


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    torch.manual_seed(3)
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64)
    return _save(transformers.ViTModel(cfg), tmp_path_factory.mktemp("vit"))


@pytest.fixture(scope="module")
def whisper(tmp_path_factory):
    torch.manual_seed(4)
    cfg = transformers.WhisperConfig(num_mel_bins=80, d_model=32, encoder_layers=2, encoder_attention_heads=2,
                                     decoder_layers=1, decoder_attention_heads=2, encoder_ffn_dim=64,
                                     decoder_ffn_dim=64, vocab_size=100, max_source_positions=1500,
                                     pad_token_id=1, bos_token_id=2, eos_token_id=2, decoder_start_token_id=3)
    return _save(transformers.WhisperModel(cfg), tmp_path_factory.mktemp("whisper"))


@pytest.mark.parametrize("lm", ["gpt2", "llama", "qwen2"])
def test_closed_gates_give_the_plain_lm_logits(lm, request):
    folder = request.getfixturevalue(lm)
    cfg = resolve_config(MirasolConfig.preset("tiny", text_backbone=str(folder)))
    model = Mirasol.build(cfg).eval()
    plain = transformers.AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    video, audio = media_batch(cfg)
    ids = torch.randint(0, plain.config.vocab_size, (2, 7))
    with torch.no_grad():
        ours = model(video, audio, ids).logits
        theirs = plain(ids).logits
    lm_vocab = plain.config.vocab_size
    assert ours.shape[-1] == cfg.vocab_size == lm_vocab + 2  # + pad and sep
    assert torch.equal(ours[..., :lm_vocab], theirs)
    # open a gate: now the media matter
    model.text_decoder.blocks[0].attn_gate.data.fill_(1.0)
    with torch.no_grad():
        assert not torch.allclose(model(video, audio, ids).logits[..., :lm_vocab], theirs)


@pytest.mark.parametrize("lm", ["gpt2", "llama", "qwen2"])
def test_generation_with_the_lm_cache(lm, request):
    folder = request.getfixturevalue(lm)
    cfg = resolve_config(MirasolConfig.preset("tiny", text_backbone=str(folder), cross_attn_every=2))
    model = Mirasol.build(cfg).eval()
    for block in model.text_decoder.blocks:
        block.attn_gate.data.fill_(0.5)
        block.mlp_gate.data.fill_(0.5)
    video, audio = media_batch(cfg)
    # prompts of different lengths, padded with pad (a new id after the LM's vocabulary)
    prompts = torch.tensor([[cfg.bos_token_id, 5, 6, 7, cfg.sep_token_id],
                            [cfg.bos_token_id, 9, cfg.sep_token_id, cfg.pad_token_id, cfg.pad_token_id]])
    chunk_mask = torch.tensor([[True] * 4, [True, True, False, False]])
    cached = model.generate(video, audio, prompts, max_new_tokens=6, chunk_mask=chunk_mask)
    uncached = model.generate(video, audio, prompts, max_new_tokens=6, chunk_mask=chunk_mask, use_cache=False)
    assert torch.equal(cached, uncached)
    beams = model.generate(video, audio, prompts, max_new_tokens=4, num_beams=3, chunk_mask=chunk_mask)
    beams_nc = model.generate(video, audio, prompts, max_new_tokens=4, num_beams=3, use_cache=False,
                              chunk_mask=chunk_mask)
    assert torch.equal(beams, beams_nc)
    scores = model.score_candidates(video, audio, prompts, [[[5, 6], [7]], [[8], [9, 10]]], chunk_mask=chunk_mask)
    # a candidate's score is the sum of the model's log-probabilities along it (full forward)
    full = torch.tensor([[cfg.bos_token_id, 9, cfg.sep_token_id, 9, 10, cfg.eos_token_id]])
    with torch.no_grad():
        logp = model(video[1:], audio[1:], full, chunk_mask=chunk_mask[1:]).logits.log_softmax(-1)
    expected = sum(logp[0, i - 1, full[0, i]] for i in range(3, 6))
    assert scores[1, 1].item() == pytest.approx(expected.item(), abs=1e-4)


def test_whisper_features_match_the_feature_extractor():
    from mirasol.media.features import whisper_log_mel

    cfg = MirasolConfig.preset("tiny", n_mels=80, audio_patch_mels=16, audio_features="whisper")
    g = torch.Generator().manual_seed(0)
    t = torch.arange(16000 * 2) / 16000
    wave = (0.3 * torch.sin(2 * torch.pi * 440 * t) + 0.05 * torch.randn(t.shape, generator=g)).numpy()
    ours = whisper_log_mel(wave, cfg)
    ours = (torch.maximum(ours, ours.max() - 8.0) + 4.0) / 4.0
    fe = transformers.WhisperFeatureExtractor(feature_size=80)
    theirs = torch.from_numpy(fe(wave, sampling_rate=16000, return_tensors="np")["input_features"][0])
    inner = slice(2, ours.shape[1] - 2)  # edges differ: zero padding here, reflection there
    assert torch.allclose(ours[:, inner], theirs[:, inner], atol=2e-3), (ours[:, inner] - theirs[:, inner]).abs().max()


def test_video_and_audio_backbones_keep_chunks_causal(vit, whisper):
    cfg = resolve_config(MirasolConfig.preset("tiny", video_backbone=str(vit), audio_backbone=str(whisper)))
    assert cfg.audio_features == "whisper" and cfg.n_mels == 80
    model = Mirasol.build(cfg).eval()
    assert model.video_encoder.out_dim == 32 and model.audio_encoder.grid == (cfg.audio_frames_per_chunk // 2, 1)
    video, audio = media_batch(cfg)
    with torch.no_grad():
        h = model.encode_media(video, audio)
        video2, audio2 = video.clone(), audio.clone()
        video2[:, 2 * cfg.frames_per_chunk:] = torch.rand_like(video2[:, 2 * cfg.frames_per_chunk:])
        audio2[..., 2 * cfg.audio_frames_per_chunk:] += 1.0
        h2 = model.encode_media(video2, audio2)
    assert torch.allclose(h[:, :2], h2[:, :2], atol=1e-5) and not torch.allclose(h[:, 2:], h2[:, 2:])


def _cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "mirasol.cli", *args], capture_output=True, text=True, env=env)


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["text_loss"] for r in rows if "text_loss" in r]


FAST = ["train.batch_size=8", "train.max_steps=8", "train.save_every=4", "train.eval_every=0", "train.log_every=1",
        "train.warmup_steps=1", "train.plots=false", "train.lr=3e-3",
        "train.questions_per_clip=1"]  # 8 clips a batch: the loss comparison below must not hinge on 1-2 clips


@pytest.mark.slow
def test_train_frozen_lm_with_lora_then_ask_and_reload(world, gpt2, vit, tmp_path):
    from safetensors.torch import load_file

    from mirasol.model import Mirasol

    run = tmp_path / "run"
    result = _cli("train", "--config", "tiny", "--train", str(world / "train.jsonl"), "--out", str(run), *FAST,
                  f"model.text_backbone={gpt2}", f"model.video_backbone={vit}", "train.freeze=[text_backbone]",
                  "train.lora={r: 4, alpha: 8, targets: [c_attn]}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trainable /" in result.stderr
    losses = _losses(run)
    assert len(losses) == 8 and sum(losses[-2:]) < sum(losses[:2])  # a few steps lower the loss

    saved = load_file(str(run / "model.safetensors"))
    lm_keys = [k for k in saved if k.startswith("text_decoder.lm.")]
    assert lm_keys and all("lora_" in k for k in lm_keys)  # of the LM only the adapters are saved
    assert any(k.startswith("video_encoder.encoder.") for k in saved)  # the unfrozen ViT was trained, so saved
    info = json.loads((run / "backbones.json").read_text())
    assert info["text_backbone"]["sha256"] == weights_hash(gpt2) and info["lora"]["r"] == 4

    model = Mirasol.from_pretrained(run)
    plain = transformers.AutoModelForCausalLM.from_pretrained(gpt2, local_files_only=True)
    lm_state = {k: v for k, v in model.text_decoder.lm.state_dict().items() if "lora_" not in k}
    for name, value in plain.state_dict().items():  # frozen: exactly the folder's weights
        key = name.replace("c_attn.", "c_attn.base_layer.")
        assert torch.equal(lm_state[key], value), name
    lora_b = [v for k, v in model.text_decoder.lm.state_dict().items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # adapters moved away from their zero init
    gates = [b.attn_gate.item() for b in model.text_decoder.blocks]
    assert any(g != 0 for g in gates)

    # save / load round trip: identical outputs
    cfg = model.cfg
    video, audio = media_batch(cfg)
    ids = torch.tensor([[cfg.bos_token_id, 5, 6, cfg.sep_token_id, 7]])
    model.save_pretrained(tmp_path / "copy")
    again = Mirasol.from_pretrained(tmp_path / "copy")
    with torch.no_grad():
        assert torch.equal(model(video[:1], audio[:1], ids).logits, again(video[:1], audio[:1], ids).logits)

    video_file = world / json.loads((world / "test.jsonl").read_text().splitlines()[0])["video"]
    answer = _cli("ask", "--run", str(run), str(video_file), "what shape is the object?")
    assert answer.returncode == 0, answer.stderr[-2000:]

    # a changed backbone is refused, naming its folder
    weights = gpt2 / "model.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-4] + bytes(4))
        with pytest.raises(ValueError, match=f"{gpt2}.*changed"):
            Mirasol.from_pretrained(run)
    finally:
        weights.write_bytes(original)


@pytest.mark.slow
def test_full_fine_tune_changes_the_lm_and_saves_it(world, llama, tmp_path):
    run = tmp_path / "run"
    result = _cli("train", "--config", "tiny", "--train", str(world / "train.jsonl"), "--out", str(run),
                  *FAST, "train.max_steps=4", f"model.text_backbone={llama}")
    assert result.returncode == 0, result.stderr[-3000:]
    from safetensors.torch import load_file

    saved = load_file(str(run / "model.safetensors"))
    plain = transformers.AutoModelForCausalLM.from_pretrained(llama, local_files_only=True).state_dict()
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(saved["text_decoder.lm." + key], plain[key])  # trained, and saved in full


def test_bad_backbone_settings_are_named(gpt2, tmp_path):
    from mirasol.config import ConfigError
    from mirasol.run_config import load_run_config

    with pytest.raises(ConfigError, match="train.freeze.*model.video_backbone"):
        load_run_config("tiny", [f"model.text_backbone={gpt2}", "train.freeze=[video_backbone]"])
    with pytest.raises(ConfigError, match="train.lora.targets"):
        load_run_config("tiny", [f"model.text_backbone={gpt2}", "train.lora={r: 4}"])
    with pytest.raises(ConfigError, match=f"{tmp_path}.*not a local Hugging Face model folder"):
        resolve_config(MirasolConfig.preset("tiny", text_backbone=str(tmp_path)))


def test_packaged_gpt2_lora_config_loads():
    from mirasol.run_config import load_run_config

    cfg = load_run_config("gpt2-lora")
    assert cfg.model.text_backbone == "/models/gpt2" and cfg.train.freeze == ["text_backbone"]
    assert cfg.train.lora["targets"] == ["c_attn"] and cfg.model.cross_attn_every == 3


@pytest.mark.slow
def test_sharded_run_with_a_pretrained_lm_validates_saves_consolidates_and_answers(world, gpt2, tmp_path):
    """The way the mirasol3b preset is meant to be trained: a pretrained LM (GPT-2: tied input and
    output embeddings) under train.strategy=fsdp. It validates on an unsharded copy, saves a
    consolidated model, and `mirasol consolidate` / `mirasol ask` work on the run."""
    from safetensors.torch import load_file

    run = tmp_path / "run"
    result = _cli("train", "--config", "tiny", "--train", str(world / "train.jsonl"), "--val",
                  str(world / "val.jsonl"), "--out", str(run), *FAST, "train.max_steps=4", "train.save_every=2",
                  "train.eval_every=2", "train.eval_samples=4", "train.strategy=fsdp",
                  "train.save_consolidated=false", f"model.text_backbone={gpt2}")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_accuracy" in r] == [2, 4]  # validated on the unsharded copy
    step2, step4 = run / "checkpoints" / "step_00000002", run / "checkpoints" / "step_00000004"
    assert (step2 / "sharded").is_dir() and not (step2 / "model.safetensors").exists()  # save_consolidated=false
    assert (step4 / "model.safetensors").exists() and (run / "backbones.json").exists()  # the last save: in full
    saved = load_file(str(run / "model.safetensors"))
    assert "text_decoder.lm.transformer.wte.weight" in saved  # the tied embedding, once

    # consolidate the step-2 checkpoint (only shards there), then load it
    out = tmp_path / "consolidated"
    result = _cli("consolidate", str(step2), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    model2 = Mirasol.from_pretrained(out)
    assert json.loads((out / "backbones.json").read_text())["text_backbone"]["sha256"] == weights_hash(gpt2)
    # ... and the last one: the same weights as the model.safetensors written during training
    result = _cli("consolidate", str(run), "--out", str(tmp_path / "last"))
    assert result.returncode == 0, result.stderr[-3000:]
    last = load_file(str(tmp_path / "last" / "model.safetensors"))
    assert set(last) == set(saved) and all(torch.equal(last[k], saved[k]) for k in saved)
    model4 = Mirasol.from_pretrained(run)
    assert not torch.equal(model2.text_decoder.lm.transformer.wte.weight, model4.text_decoder.lm.transformer.wte.weight)

    video_file = world / json.loads((world / "test.jsonl").read_text().splitlines()[0])["video"]
    answer = _cli("ask", "--run", str(run), str(video_file), "what shape is the object?")
    assert answer.returncode == 0 and answer.stdout.strip(), answer.stderr[-2000:]
