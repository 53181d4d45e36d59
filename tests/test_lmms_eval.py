"""The lmms-eval model (`lmms-eval --model mirasol`) and the task a manifest becomes (`mirasol lmms-task`):
per row, the same answers and scores as `mirasol evaluate`.

Where lmms-eval is not installed (it is an extra: the `lmms-eval` one), the model is driven through a
stand-in for the two lmms-eval classes it uses, its base class and the request object, with the
fields lmms-eval 0.7 gives them; the last test runs lmms-eval itself where it is installed."""

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from mirasol.cli import main as cli
from mirasol.lmms_eval import task as hooks

HAVE_LMMS_EVAL = importlib.util.find_spec("lmms_eval") is not None


@pytest.fixture
def plugin(monkeypatch):
    """mirasol.lmms_eval.model, imported against lmms-eval or, without it, against a stand-in."""
    if not HAVE_LMMS_EVAL:
        @dataclasses.dataclass
        class Instance:
            request_type: str
            arguments: tuple
            idx: int
            metadata: dict = dataclasses.field(default_factory=dict)

            def __post_init__(self):
                self.task_name, self.doc_id, self.repeats = (self.metadata["task"], self.metadata["doc_id"],
                                                             self.metadata["repeats"])

            @property
            def args(self):
                return self.arguments

        class lmms:  # noqa: N801  (lmms-eval's spelling)
            def __init__(self):
                self._rank, self.task_dict = 0, {}

            @property
            def rank(self):
                return self._rank

        for name, attrs in {"lmms_eval": {}, "lmms_eval.api": {}, "lmms_eval.api.model": {"lmms": lmms},
                            "lmms_eval.api.instance": {"Instance": Instance}}.items():
            monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attrs))
        monkeypatch.delitem(sys.modules, "mirasol.lmms_eval.model", raising=False)
    import mirasol.lmms_eval.model as model

    return model


def _task(data: Path, out: Path) -> dict:
    assert cli(["lmms-task", str(data / "test.jsonl"), "--out", str(out)]) == 0
    return {half: [json.loads(line) for line in (out / f"mirasol_test_{half}.jsonl").read_text().splitlines()]
            for half in ("free", "choice")}


def _instance(plugin, kind: str, args: tuple, idx: int = 0):
    """A request as lmms-eval makes one: args end with (doc_id, task, split)."""
    return plugin.Instance(kind, args, idx, {"task": args[-2], "doc_id": args[-3], "repeats": 1})


def _requests(plugin, kind: str, task: str, docs: list[dict]) -> list:
    requests = []
    for i, doc in enumerate(docs):
        ctx = hooks.doc_to_text(doc)
        if kind == "generate_until":
            requests.append(_instance(plugin, kind, (ctx, {"until": [], "do_sample": False}, hooks.doc_to_visual, i,
                                                     task, "test")))
        else:  # multiple_choice: one request per choice, the continuation after lmms-eval's " " delimiter
            requests += [_instance(plugin, kind, (ctx, f" {c}", hooks.doc_to_visual, i, task, "test"), j)
                         for j, c in enumerate(hooks.doc_to_choice(doc))]
    return requests


def _pair(response) -> tuple:
    return getattr(response, "text", response)


def _evaluated(run: Path, folder: str = "eval") -> dict:
    return {p["id"]: p for p in map(json.loads, (run / folder / "predictions.jsonl").read_text().splitlines())}


def test_task_files(trained_run, tmp_path):
    _, data, _ = trained_run
    rows = _task(data, tmp_path / "tasks")
    manifest = (data / "test.jsonl").read_text().splitlines()
    assert len(rows["free"]) + len(rows["choice"]) == len(manifest) and rows["choice"]
    assert all(Path(r["video"]).is_absolute() and Path(r["video"]).exists() for r in rows["free"] + rows["choice"])
    config = (tmp_path / "tasks" / "mirasol_test_choice.yaml").read_text()
    assert "task: mirasol_test_choice" in config and "_mirasol_choice.yaml" in config
    assert (tmp_path / "tasks" / "mirasol_test.yaml").read_text().count("  - mirasol_test_") == 2
    caption = next(r for r in rows["free"] if r["task"] == "caption")
    assert hooks.doc_to_text(caption) and hooks.process_results(caption, [caption["answer"].upper() + "."]) == \
        {"exact_match": 1.0}
    assert cli(["lmms-task", str(data / "test.jsonl"), "--out", str(tmp_path / "x"), "--name", "9 bad"]) == 2


def test_task_folder_is_self_contained(tmp_path, monkeypatch):
    """Each task includes its template by a name in its own folder (where lmms-eval looks for a
    relative include), not by the installed package's path: the folder still loads once moved
    elsewhere, or after mirasol is reinstalled in another place."""
    import shutil

    import yaml

    from mirasol.corpora.synth import synthesize

    class Loader(yaml.SafeLoader):  # the templates' `!function module.name` tags, kept as their text
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    synthesize(tmp_path / "data", num=3, seed=1)
    _task(tmp_path / "data", tmp_path / "tasks")
    moved = Path(shutil.move(tmp_path / "tasks", tmp_path / "moved"))
    monkeypatch.chdir(tmp_path)  # an include must not depend on the working folder either
    kinds = {"free": "generate_until", "choice": "multiple_choice"}
    for half, kind in kinds.items():
        config = yaml.load((moved / f"mirasol_test_{half}.yaml").read_text(), Loader=Loader)
        include = Path(config.pop("include"))
        assert not include.is_absolute() and include.parent == Path(".")
        template = moved / include
        assert template.read_text() == (hooks.TEMPLATES / include.name).read_text()
        merged = {**yaml.load(template.read_text(), Loader=Loader), **config}
        assert merged["output_type"] == kind and merged["task"] == f"mirasol_test_{half}"
        assert merged["doc_to_visual"] == "mirasol.lmms_eval.task.doc_to_visual"
        assert (moved / merged["dataset_kwargs"]["data_files"]["test"]).is_file()
    assert all(str(hooks.TEMPLATES) not in p.read_text() for p in moved.glob("*.yaml"))


@pytest.mark.parametrize("whole", [False, True], ids=["clip", "whole"])
def test_model_answers_as_evaluate_does(plugin, trained_run, tmp_path, whole):
    """The model class, given lmms-eval's requests for every row: evaluate's answer and correctness per
    row (whole=true: those of `mirasol evaluate --whole`)."""
    _, data, run = trained_run
    rows = _task(data, tmp_path / "tasks")
    model = plugin.MirasolLMMS(run=str(run), device="cpu", whole=str(whole).lower())
    model.task_dict = {"mirasol_test_free": {"test": rows["free"]}, "mirasol_test_choice": {"test": rows["choice"]}}
    if whole:
        from mirasol.eval.evaluate import evaluate

        evaluate(run, data / "test.jsonl", tmp_path / "whole" / "report.json", whole=True, progress=False)
        expected = _evaluated(tmp_path / "whole", "")
    else:
        expected = _evaluated(run)

    answers = model.generate_until(_requests(plugin, "generate_until", "mirasol_test_free", rows["free"]))
    for doc, answer in zip(rows["free"], answers):
        assert answer == expected[doc["id"]]["prediction"], doc["id"]
        assert hooks.process_results(doc, [answer])["exact_match"] == float(expected[doc["id"]]["correct"])

    requests = _requests(plugin, "loglikelihood", "mirasol_test_choice", rows["choice"])
    scores = [_pair(r) for r in model.loglikelihood(requests)]
    at = 0
    for doc in rows["choice"]:
        choices = hooks.doc_to_choice(doc)
        mine = scores[at:at + len(choices)]
        at += len(choices)
        chosen = choices[min(range(len(choices)), key=lambda k: mine[k][0])]  # lmms-eval takes the lowest
        assert chosen == expected[doc["id"]]["prediction"], doc["id"]
        assert all(isinstance(greedy, bool) for _, greedy in mine)


def test_generation_settings_and_streaming(plugin, trained_run, tmp_path, monkeypatch, capsys):
    """The request's max_new_tokens (below the run's budget), sampling settings and `until` reach the
    decoder; whole=true streams; documents of other tasks are asked their context."""
    _, data, run = trained_run
    free = [r for r in _task(data, tmp_path / "tasks")["free"] if r["task"] == "qa"][:2]

    def ask(model, gen_kwargs, docs=free, visual=hooks.doc_to_visual):
        model.task_dict = {"t": {"test": docs}}
        return model.generate_until([_instance(plugin, "generate_until", (hooks.doc_to_text(d) if "task" in d
                                                                          else d["question"], gen_kwargs, visual,
                                                                          i, "t", "test"))
                                     for i, d in enumerate(docs)])

    model = plugin.MirasolLMMS(run=str(run), max_new_tokens="6")
    assert len(ask(model, {})) == 2  # the real decoder, before it is replaced below
    calls = []

    def decoder(model_, tokenizer, memory, prompt_ids, samples, labels=None, max_new_tokens=24, memory_mask=None,
                generate_kwargs=None):
        calls.append((len(samples), max_new_tokens, generate_kwargs))
        return ["a red square, then a blue one"] * len(samples)

    original = plugin.predict_from_memory
    monkeypatch.setattr(plugin, "predict_from_memory", decoder)
    assert ask(model, {}) == ["a red square, then a blue one"] * 2 and calls[-1] == (2, 6, {})
    ask(model, {"max_new_tokens": 2}), ask(model, {"max_new_tokens": 64})
    assert [c[1] for c in calls[-2:]] == [2, 6]  # the model's budget bounds the request's
    assert ask(model, {"until": [", then", "\n"]}) == ["a red square"] * 2
    ask(model, {"do_sample": True, "temperature": 0.7, "top_p": 0.9})
    assert calls[-1][2] == {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 0}
    ask(model, {"do_sample": False, "temperature": 0, "num_beams": 3})
    assert calls[-1][2] == {"num_beams": 3}
    monkeypatch.setattr(plugin, "predict_from_memory", original)

    streamed = plugin.MirasolLMMS(run=str(run), whole="true", window="2")
    assert len(ask(streamed, {})) == 2 and streamed.window == 2 and streamed._latents
    with pytest.raises(Exception, match="whole=true"):
        plugin.MirasolLMMS(run=str(run), window="2")
    with pytest.raises(Exception, match="unknown model_args windw"):
        plugin.MirasolLMMS(run=str(run), windw="2")

    # a document that is no manifest row: its context is the question; a visual that is no video file
    # gets an empty answer and a warning, and the rest are answered
    field = [{"video_path": free[0]["video"], "question": "what shape is it?"}] * 2
    assert ask(model, {}, field, lambda d: [d["video_path"]]) == ask(model, {}, field[:1], lambda d: [d["video_path"]]) * 2
    mixed = ask(model, {}, field, lambda d: [d["video_path"]] if d is field[0] else [object()])
    assert len(mixed) == 2
    assert ask(model, {}, field[:1], lambda d: [object()]) == [""]
    assert "doc_to_visual gave object instead of a path; 1 request(s) answered with an empty string" in \
        capsys.readouterr().err


@pytest.mark.skipif(not HAVE_LMMS_EVAL, reason="lmms-eval is not installed (pip install -e '.[lmms-eval]')")
def test_entry_point_names_the_model():
    from importlib.metadata import entry_points

    from lmms_eval.models import get_model

    [point] = [p for p in entry_points(group="lmms_eval.models") if p.name == "mirasol"]
    assert point.load()().model_id == "mirasol"
    assert get_model("mirasol").__name__ == "MirasolLMMS"


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_LMMS_EVAL, reason="lmms-eval is not installed (pip install -e '.[lmms-eval]')")
def test_lmms_eval_runs_the_task_offline_with_evaluate_s_scores(trained_run, tmp_path):
    """`lmms-eval --model mirasol ... --tasks mirasol_test` itself, with no network: per row, evaluate's
    answer and score."""
    _, data, run = trained_run
    rows = _task(data, tmp_path / "tasks")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf"), "CUDA_VISIBLE_DEVICES": ""}
    began = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "lmms_eval", "--model", "mirasol", "--model_args", f"run={run}",
                             "--tasks", "mirasol_test", "--include_path", str(tmp_path / "tasks"), "--batch_size", "1",
                             "--log_samples", "--output_path", str(tmp_path / "out")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0 and "mirasol_test_free" in result.stdout, result.stdout[-2000:] + result.stderr[-3000:]
    print(f"lmms-eval: {time.monotonic() - began:.1f} s")
    expected = _evaluated(run)
    seen = 0
    for half, metric in (("free", "exact_match"), ("choice", "acc")):
        [file] = (tmp_path / "out").rglob(f"*samples_mirasol_test_{half}.jsonl")
        for sample in map(json.loads, file.read_text().splitlines()):
            doc = rows[half][sample["doc_id"]]
            if half == "free":
                answer = sample["filtered_resps"]
                answer = answer[0] if isinstance(answer, list) else answer
            else:
                losses = [float(r[0]) for r in sample["filtered_resps"]]
                answer = doc["choices"][losses.index(min(losses))]
            assert answer == expected[doc["id"]]["prediction"], doc["id"]
            assert sample[metric] == float(expected[doc["id"]]["correct"]), doc["id"]
            seen += 1
    assert seen == len(expected)
