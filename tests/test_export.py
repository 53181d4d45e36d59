"""`mirasol export`: a trained run -> a Hugging Face model folder that loads and answers as the run
does, with a model card that huggingface_hub reads; Hub repository ids through the same loading path."""

import json
from pathlib import Path

import pytest
import torch

from mirasol import Mirasol
from mirasol.cli import main as cli


def _predictions(folder: Path) -> dict:
    return {p["id"]: p["prediction"] for p in map(json.loads, folder.read_text().splitlines())}


def test_export_loads_and_answers_as_the_run(trained_run, tmp_path):
    root, data, run = trained_run
    out = tmp_path / "mirasol-tiny-synth"
    assert cli(["export", str(run), "--out", str(out)]) == 0
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
                 "train_stats.json", "README.md", "eval_results.json"):
        assert (out / name).is_file(), name
    exported, original = Mirasol.from_pretrained(out), Mirasol.from_pretrained(run)
    assert exported.cfg == original.cfg
    for (name, a), (_, b) in zip(exported.state_dict().items(), original.state_dict().items()):
        assert torch.equal(a, b), name
    # every row answered alike: the folder reads as a run directory
    assert cli(["evaluate", "--run", str(out), "--manifest", str(data / "test.jsonl"),
                "--out", str(tmp_path / "eval" / "report.json")]) == 0
    assert _predictions(tmp_path / "eval" / "predictions.jsonl") == _predictions(run / "eval" / "predictions.jsonl")
    # an occupied --out is refused with one line
    assert cli(["export", str(run), "--out", str(out)]) == 2


def test_model_card_parses_with_the_expected_metadata(trained_run, tmp_path):
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import ModelCard

    _, _, run = trained_run
    out = tmp_path / "card"
    assert cli(["export", str(run), "--out", str(out), "--license", "mit"]) == 0
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "mirasol" and card.data.license == "mit"
    assert card.data.pipeline_tag == "video-text-to-text" and "audio-visual" in card.data.tags
    report = json.loads((run / "eval" / "report.json").read_text())
    overall = [r for r in card.data.eval_results if r.metric_name == "accuracy (all)"]
    assert len(overall) == 1 and overall[0].metric_value == pytest.approx(report["accuracy"], abs=1e-4)
    text = card.text
    params = Mirasol.from_pretrained(run).num_parameters()["total"]
    assert "preset: `tiny`" in text and f"{params:,}" in text and "steps: 4" in text
    command = json.loads((run / "commands.jsonl").read_text().splitlines()[0])["command"]
    assert command.startswith("mirasol train --config tiny") and command in text
    for family, t in report["by_type"].items():  # each family's row with its answer prior
        assert f"| {family} | {t['n']} | {t['accuracy']:.3f} | {t['answer_prior']:.3f} |" in text


def test_card_without_a_report_or_a_recorded_command_says_how(trained_run, tmp_path):
    import shutil

    _, _, run = trained_run
    old = tmp_path / "old-run"  # a run from before commands.jsonl, never evaluated
    shutil.copytree(run, old, ignore=shutil.ignore_patterns("eval", "commands.jsonl"))
    assert cli(["export", str(old), "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "README.md").read_text()
    assert "No evaluation report was found" in text and f"mirasol evaluate --run {old}" in text
    assert "not recorded" in text and "model-index" not in text


def test_transformers_reads_the_tokenizer(trained_run, tmp_path):
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from mirasol.run_dir import load_tokenizer

    _, _, run = trained_run
    assert cli(["export", str(run), "--out", str(tmp_path / "out")]) == 0
    theirs, ours = AutoTokenizer.from_pretrained(str(tmp_path / "out")), load_tokenizer(run)
    text = "what shape is the object?"
    assert theirs(text, add_special_tokens=False).input_ids == ours.encode(text)
    assert (theirs.eos_token_id, theirs.pad_token_id) == (ours.eos_id, ours.pad_id)


def test_hub_repo_ids_load_through_the_local_folder_path(trained_run, tmp_path, monkeypatch):
    """No hub is reachable in the tests: snapshot_download is replaced by one that returns an exported folder."""
    hub = pytest.importorskip("huggingface_hub")
    from mirasol.ask import ask

    _, data, run = trained_run
    out = tmp_path / "snapshot"
    assert cli(["export", str(run), "--out", str(out)]) == 0
    asked = []

    def snapshot_download(repo_id, revision=None, **kwargs):
        asked.append((repo_id, revision))
        return str(out)

    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    model = Mirasol.from_pretrained("someone/mirasol-tiny", revision="v1")
    assert asked == [("someone/mirasol-tiny", "v1")] and model.cfg == Mirasol.from_pretrained(run).cfg
    video = data / json.loads((data / "test.jsonl").read_text().splitlines()[0])["video"]
    assert ask("someone/mirasol-tiny", str(video), "what shape is the object?") == ask(str(run), str(video),
                                                                                     "what shape is the object?")
    # a missing local path is never looked up on the hub; an id the hub cannot give names itself
    with pytest.raises(FileNotFoundError, match="not a saved Mirasol model"):
        Mirasol.from_pretrained(tmp_path / "missing" / "run")

    def unreachable(repo_id, revision=None, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(hub, "snapshot_download", unreachable)
    with pytest.raises(FileNotFoundError, match="someone/other is neither a local folder nor a Hugging Face Hub"):
        Mirasol.from_pretrained("someone/other")
