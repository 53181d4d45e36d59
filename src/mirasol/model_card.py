"""The model card (README.md) of an exported model: Hugging Face's format, YAML metadata between
`---` lines, then Markdown. Made from what a run directory records (config, train stats, metrics,
commands.jsonl) and the evaluation reports of `mirasol evaluate`; `huggingface_hub.ModelCard` reads it."""

from __future__ import annotations

from pathlib import Path

import yaml

from mirasol.config import PRESETS, MirasolConfig

PIPELINE_TAG = "video-text-to-text"  # the Hub's task for models that answer in text about videos
TAGS = ["mirasol", "mirasol3b", "video", "audio", "audio-visual", "video-question-answering", "multimodal"]


def closest_preset(cfg: MirasolConfig) -> tuple[str, dict]:
    """(the preset this config differs least from, {key: value} where it differs)."""
    mine = cfg.to_dict()
    best = None
    for name in PRESETS:
        base = MirasolConfig.preset(name).to_dict()
        changes = {k: v for k, v in mine.items() if base.get(k) != v}
        if best is None or len(changes) < len(best[1]):
            best = (name, changes)
    return best


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _metadata(name: str, license: str, reports: list[dict]) -> dict:
    meta = {"library_name": "mirasol", "license": license, "pipeline_tag": PIPELINE_TAG, "tags": list(TAGS)}
    results = []
    for report in reports:
        metrics = [{"type": "accuracy", "value": round(report["accuracy"], 4), "name": "accuracy (all)"}]
        metrics += [{"type": "accuracy", "value": round(t["accuracy"], 4), "name": f"accuracy: {family}"}
                    for family, t in report["by_type"].items()]
        results.append({"task": {"type": PIPELINE_TAG, "name": "Video question answering"},
                        "dataset": {"name": Path(report.get("manifest", "evaluation")).name,
                                    "type": "mirasol-manifest"},
                        "metrics": metrics})
    if results:
        meta["model-index"] = [{"name": name, "results": results}]
    return meta


def _evaluation(reports: list[dict], run: str) -> list[str]:
    if not reports:
        return ["No evaluation report was found for this run. Make one, then export again:", "",
                "```bash", f"mirasol evaluate --run {run} --manifest TEST.jsonl --out {run}/eval/report.json",
                f"mirasol export {run} --out EXPORT --report {run}/eval/report.json", "```", ""]
    lines = []
    for report in reports:
        how = [k for k in ("whole", "window", "media") if report.get(k) not in (None, False, "none")]
        mode = ", ".join(f"{k}={report[k]}" for k in how) if how else "the training clip window"
        lines += [f"`mirasol evaluate` on `{Path(report.get('manifest', '?')).name}` ({report['n']} rows, {mode}). "
                  "The answer prior is the accuracy of always giving the most frequent training answer of "
                  "the family: what a model that ignores the video and audio scores.", "",
                  "| family | rows | accuracy | answer prior | gain |", "|---|---:|---:|---:|---:|"]
        for family, t in report["by_type"].items():
            lines.append(f"| {family} | {t['n']} | {t['accuracy']:.3f} | {t['answer_prior']:.3f} | "
                         f"{t['accuracy'] - t['answer_prior']:+.3f} |")
        prior = report["baselines"]["answer_prior"]
        lines.append(f"| **all** | {report['n']} | {report['accuracy']:.3f} | {prior:.3f} | "
                     f"{report['accuracy'] - prior:+.3f} |")
        if "caption" in report:
            lines += ["", f"Captions: BLEU-4 {report['caption']['bleu4']:.3f}, CIDEr-D {report['caption']['cider']:.3f}."]
        lines.append("")
    return lines


def _training(commands: list[dict], stats: dict, steps: int | None, run_cfg: dict) -> list[str]:
    train = run_cfg.get("train", {})
    families = sorted(stats.get("answers_by_family") or stats.get("answer_prior") or {})
    lines = [f"- steps: {steps if steps is not None else 'unknown'} (of `train.max_steps` {train.get('max_steps')}), "
             f"batch {train.get('batch_size')}, lr {train.get('lr')}, seed {train.get('seed')}"]
    if commands:
        lines.append(f"- training manifest: `{commands[0]['train']}`"
                     + (f", validation: `{commands[0]['val']}`" if commands[0].get("val") else ""))
    lines.append(f"- training rows: {stats.get('num_samples', 'unknown')}; question families: "
                 + (", ".join(families) if families else "not recorded"))
    if stats.get("labels"):
        lines.append(f"- closed label set (classification rows): {len(stats['labels'])} labels")
    lines += ["", "The command that trained it" + (" (then each resume):" if len(commands) > 1 else ":"), "",
              "```bash"]
    recorded = [c for c in commands if c.get("command")]
    if recorded:
        lines += [c["command"] for c in recorded]
    elif commands:
        lines.append(f"# started from Python: mirasol.train.loop.train(config.json, {commands[0]['train']!r}, ...)")
    else:
        lines.append("# not recorded (this run predates RUN/commands.jsonl); its full settings are in config.json:")
        lines.append("mirasol train --config config.json --train TRAIN.jsonl --out RUN")
    lines += ["```", ""]
    return lines


def model_card(name: str, run: str, run_cfg: dict, params: dict, stats: dict, steps: int | None,
               commands: list[dict], reports: list[dict], license: str = "apache-2.0",
               backbones: dict | None = None) -> str:
    """README.md of an exported model. `params`: Mirasol.num_parameters(); `reports`: the JSON
    reports of `mirasol evaluate`; `backbones`: backbones.json of a run with pretrained parts."""
    cfg = MirasolConfig.from_dict(run_cfg["model"])
    preset, changes = closest_preset(cfg)
    changed = ", ".join(f"`{k}={v}`" for k, v in sorted(changes.items()))
    lines = ["---", yaml.safe_dump(_metadata(name, license, reports), sort_keys=False).rstrip(), "---", "",
             f"# {name}", "",
             "A [Mirasol3B](https://arxiv.org/abs/2311.05698)-style model trained with `mirasol`: it answers "
             "questions about a video and its audio track, in text. Time-aligned chunks of video and audio "
             "are encoded, combined and modelled autoregressively over time; a text decoder answers from "
             "that memory.", "",
             "## Model", "",
             f"- preset: `{preset}`" + (f", changed: {changed}" if changes else " (unchanged)"),
             f"- parameters: {params['total']:,} ({_count(params['total'])}); audio-video part "
             f"{params['audio_video']:,}, text decoder {params['text_decoder']:,}",
             f"- input: {cfg.num_chunks} chunks x {cfg.frames_per_chunk} frames at {cfg.fps:g} fps "
             f"({cfg.clip_seconds:g} s), {cfg.image_size}x{cfg.image_size} pixels; audio at {cfg.sample_rate} Hz, "
             f"{cfg.n_mels} mel bins", ""]
    if backbones:
        parts = [k for k in backbones if k.endswith("_backbone")]
        lines += [f"Pretrained parts ({', '.join(parts)}) are not in this folder: loading it needs the same "
                  "model folders, at the paths in config.json, with the weights whose SHA-256 backbones.json "
                  "records.", ""]
    lines += ["## Training", ""] + _training(commands, stats, steps, run_cfg)
    lines += ["## Evaluation", ""] + _evaluation(reports, run)
    lines += ["## Use", "", "```bash", "pip install 'mirasol[hub]'",
              f'mirasol ask --run OWNER/{name} video.mp4 "what shape is the object?"', "```", "",
              "```python", "from mirasol import Mirasol", "", f'model = Mirasol.from_pretrained("OWNER/{name}")',
              "```", "",
              f"`OWNER/{name}` is this folder's Hub repository id, or the folder itself on disk. "
              "lmms-eval runs it as `lmms-eval --model mirasol --model_args run=OWNER/" + name + " --tasks ...`.", "",
              "## Intended use and limits", "",
              "- Research on audio-visual question answering, captioning and classification of short videos, "
              "and on models of time-aligned video and audio.",
              f"- It answers about {cfg.clip_seconds:g} s of a video at a time unless streamed whole "
              "(`mirasol ask --whole`), and only in the kind of questions and answers it was trained on: "
              "free answers stop where its training answers stopped. Ask it about anything else and it still "
              "answers, with no sign that it is guessing.",
              "- Compare every accuracy with the answer prior above: a gain near zero means the model learnt "
              "the answer distribution, not the video.",
              "- Not for decisions about people: nothing here was evaluated for fairness, safety or robustness.",
              ""]
    return "\n".join(lines)
