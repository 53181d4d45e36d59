"""The ablation grid's results as tables: per-row statistics over seeds, the claims tested between
rows, and the markdown blocks of the docs, all made from result files.

A result file is one finished run (`<variant>-seed<k>-steps<N>.json`: the run's result.json with
the grid settings it ran under), or a summary of several (`"kind": "summary"`: n, mean and sd per
report and family, for runs whose per-seed files were not kept). Per row, a summary pools with the
runs of other seeds exactly (from the moments); runs of a seed a summary also lists replace it.

Each claim compares one row's overall test accuracy with another's at the same step budget:
Welch's t-test, its 95 % interval, the smallest difference the seeds could detect, and the verdict
word (mirasol.eval.stats.VERDICT_RULE).

Markdown blocks: the text between the lines `<!-- ablate:KIND key=value ... -->` and
`<!-- /ablate:KIND -->` is rewritten by `render_blocks`. KIND is `rows` (every family; `steps=N`),
`short` (`steps=N families=a,b`), both optionally with `reports=test,shuffle,...`, or `claims`
(optionally `steps=N`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from mirasol.errors import UsageError
from mirasol.eval.stats import ALPHA, POWER, VERDICT_RULE, Spread, welch

SUMMARY = "summary"
SETTING_KEYS = ("clips", "seconds", "clips_per_step", "extra")  # runs compare only when these agree


@dataclass(frozen=True)
class Claim:
    name: str
    statement: str
    row: str
    against: str
    sign: int  # the claimed sign of row - against: +1, -1, or 0 for "they differ"


CLAIMS = (
    Claim("chunks", "time chunks beat the whole video at once", "reference", "whole_video", 1),
    Claim("latent_loss", "the autoregressive latent loss helps", "reference", "no_latent", 1),
    Claim("latent_weight", "the latent loss weight matters (1.0 against 0.1)", "latent_1.0", "reference", 0),
    Claim("combiner", "the combiner matters (TTM against the Transformer)", "ttm", "reference", 0),
    Claim("chunks_32_16", "more, shorter chunks help, 256 latents in all (32 x 1 s against 16 x 2 s)",
          "reference", "chunks_16", 1),
    Claim("chunks_16_8", "more, shorter chunks help, 256 latents in all (16 x 2 s against 8 x 4 s)",
          "chunks_16", "chunks_8", 1),
    Claim("chunks_32_16_m8", "more, shorter chunks help, 8 tokens per chunk (32 x 1 s against 16 x 2 s)",
          "reference", "chunks_16_m8", 1),
    Claim("chunks_16_8_m8", "more, shorter chunks help, 8 tokens per chunk (16 x 2 s against 8 x 4 s)",
          "chunks_16_m8", "chunks_8_m8", 1),
    Claim("masking_0.25", "masking the combiner outputs (0.25) helps", "mask_0.25", "reference", 1),
    Claim("masking_0.5", "masking the combiner outputs (0.5) helps", "mask_0.5", "reference", 1),
    Claim("masking", "masking the combiner outputs (0.75) helps", "mask_0.75", "reference", 1),
    Claim("contrastive", "an audio-video contrastive loss helps (not a claim of the paper)", "contrastive",
          "reference", 1),
    Claim("curriculum", "8 s clips first, then 32 s clips, beat 32 s clips throughout (the recipe of "
          "docs/streaming.md)", "curriculum", "reference", 1),
    Claim("curriculum_latent_loss", "on the curriculum: the autoregressive latent loss helps", "curriculum",
          "curriculum_no_latent", 1),
    Claim("curriculum_combiner", "on the curriculum: the combiner matters (TTM against the Transformer)",
          "curriculum_ttm", "curriculum", 0),
    Claim("counting", "chunk differences in the recipe help (counting colour changes needs them)", "counting",
          "curriculum", 1),
)


# --- result files ------------------------------------------------------------------------------

def result_name(variant: str, seed: int, budget: int) -> str:
    return f"{variant}-seed{seed}-steps{budget}.json"


def budget_of(result: dict) -> int | None:
    """The grid's --steps a run or summary belongs to (a curriculum run trains steps / 2 more)."""
    budget = result.get("budget", result.get("steps"))
    return None if budget is None else int(budget)


def write_result(folder: str | os.PathLike, result: dict) -> Path:
    """Write one finished run's result file into `folder` (atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / result_name(result["variant"], result["seed"], budget_of(result))
    tmp = path.with_suffix(".part")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def read_results(folder: str | os.PathLike) -> list[dict]:
    """Every result file in `folder` (runs and summaries), each with its "file" name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"results folder {folder} does not exist")
    results = []
    for path in sorted(folder.glob("*.json")):
        try:
            result = json.loads(path.read_text())
            result["file"] = path.name
            int(result["budget"]), result["variant"], result["reports"]["test"]
        except (ValueError, KeyError, TypeError) as error:
            raise UsageError(f"{path}: not a result file of `mirasol ablate` ({error!r}); move it out of "
                             f"{folder}") from None
        results.append(result)
    return results


def settings_of(result: dict) -> dict:
    settings = result.get("settings", {})
    return {k: settings.get(k) for k in SETTING_KEYS}


def by_budget(results: list[dict]) -> dict[int, list[dict]]:
    """Results grouped by step budget; one budget's results must share their grid settings."""
    groups: dict[int, list[dict]] = {}
    for result in results:
        groups.setdefault(budget_of(result), []).append(result)
    for budget, group in groups.items():
        kinds = {json.dumps(settings_of(r), sort_keys=True): r.get("file", r["variant"]) for r in group}
        if len(kinds) > 1:
            raise UsageError(f"the results at {budget} steps were made with different grid settings "
                             f"({', '.join(kinds.values())} differ in {', '.join(SETTING_KEYS)}); keep one kind "
                             "per results folder")
    return dict(sorted(groups.items()))


# --- rows --------------------------------------------------------------------------------------

def _spread(values: list[float], summaries: list[dict]) -> Spread | None:
    """The spread of per-seed values pooled with summaries ({"mean", "sd"} over their "n" seeds, or
    their "per_seed" values)."""
    spread = Spread.of(values) if values else None
    for s in summaries:
        if s.get("per_seed"):
            part = Spread.of(s["per_seed"].values())
        else:
            part = Spread(s["n"], s["mean"], s.get("sd", 0.0))
        spread = part if spread is None else spread.pooled(part)
    return spread


def _row(variant: str, report: str, runs: list[dict], summaries: list[dict]) -> dict:
    reports = [r["reports"][report] for r in runs if report in r["reports"]]
    parts = [dict(s["reports"][report]["accuracy"], n=len(s["seeds"])) for s in summaries if report in s["reports"]]
    accuracy = _spread([rep["accuracy"] for rep in reports], parts)
    families = {}
    names = dict.fromkeys([f for rep in reports for f in rep["by_type"]]
                          + [f for s in summaries for f in s["reports"].get(report, {}).get("by_type", {})])
    for fam in names:
        fam_parts = [dict(s["reports"][report]["by_type"][fam], n=len(s["seeds"])) for s in summaries
                     if fam in s["reports"].get(report, {}).get("by_type", {})]
        spread = _spread([rep["by_type"][fam]["accuracy"] for rep in reports if fam in rep["by_type"]], fam_parts)
        families[fam] = [spread.mean, spread.sd]
    seeds = sorted({r["seed"] for r in runs if report in r["reports"]}
                   | {k for s in summaries if report in s["reports"] for k in s["seeds"]})
    row = {"variant": variant, "report": report, "seeds": seeds, "n": accuracy.n,
           "accuracy": [accuracy.mean, accuracy.sd], "interval": accuracy.interval(), "families": families,
           "transcribed": bool(summaries)}
    if report == "test":
        first = runs[0] if runs else summaries[0]
        train = _spread([r["train_seconds"] for r in runs], [dict(s["train_seconds"], n=len(s["seeds"]))
                                                             for s in summaries if "train_seconds" in s])
        evals = _spread([r["eval_seconds"] for r in runs], [dict(s["eval_seconds"], n=len(s["seeds"]))
                                                            for s in summaries if "eval_seconds" in s])
        row.update({"train_flops_per_sample": first["train_flops_per_sample"], "train_flops": first["train_flops"],
                    "parameters": first["parameters"],
                    "train_seconds": None if train is None else [train.mean, train.sd],
                    "eval_seconds": None if evals is None else [evals.mean, evals.sd]})
    return row


def summarize(results: list[dict], settings=None, order: list[str] | None = None) -> dict:
    """Rows (each variant's test report, then its other reports) with mean, sd and 95 % interval
    over seeds, the answer priors, and the claims whose two rows are both there. All results
    must be of one step budget."""
    budgets = {budget_of(r) for r in results}
    if len(budgets) > 1:
        raise ValueError(f"results of several step budgets {sorted(budgets)}: summarize each (by_budget)")
    variants = list(dict.fromkeys(r["variant"] for r in results))
    if order:
        variants.sort(key=lambda v: order.index(v) if v in order else len(order))
    rows: dict[str, dict] = {}
    priors: dict[str, float] = {}
    for name in variants:
        runs = [r for r in results if r["variant"] == name and r.get("kind") != SUMMARY]
        run_seeds = {r["seed"] for r in runs}
        summaries = [r for r in results if r["variant"] == name and r.get("kind") == SUMMARY
                     and not run_seeds & set(r["seeds"])]  # a seed's own run replaces a summary of it
        for s in summaries:
            for fam, prior in s.get("answer_prior", {}).items():
                priors.setdefault(fam, prior)
        for r in runs:
            for fam, rep in r["reports"]["test"]["by_type"].items():
                priors.setdefault(fam, rep["answer_prior"])
        for report in dict.fromkeys(k for r in runs + summaries for k in r["reports"]):
            label = name if report == "test" else f"{name} [{report}]"
            rows[label] = _row(name, report, runs, summaries)
    summary = {"steps": budgets.pop() if budgets else None, "rows": rows, "answer_prior": priors,
               "claims": claims(rows)}
    if settings is not None:
        summary["settings"] = {"seeds": list(settings.seeds), "steps": settings.steps, "clips": settings.clips,
                               "clips_per_step": settings.clips_per_step, "jobs": settings.jobs,
                               "threads": settings.threads, "extra": list(settings.extra),
                               "variants": list(settings.variants)}
    return summary


def claims(rows: dict[str, dict]) -> list[dict]:
    """Every claim whose two rows are in `rows`: Welch's test on overall test accuracy."""
    out = []
    for claim in CLAIMS:
        if claim.row not in rows or claim.against not in rows:
            continue
        a, b = (rows[name] for name in (claim.row, claim.against))
        test = welch(Spread(a["n"], *a["accuracy"]), Spread(b["n"], *b["accuracy"]), claim.sign)
        out.append({"claim": claim.name, "statement": claim.statement, "row": claim.row, "against": claim.against,
                    "sign": claim.sign, "seeds": [a["n"], b["n"]], "difference": test.difference,
                    "interval": test.interval, "t": test.t, "df": test.df, "p": test.p,
                    "detectable": test.detectable, "verdict": test.verdict})
    return out


# --- tables ------------------------------------------------------------------------------------

def _seeds(seeds: list[int]) -> str:
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def _interval(interval, digits: int = 3) -> str:
    return "-" if interval is None else f"[{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def _table(head: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(out + ["| " + " | ".join(cells) + " |" for cells in lines])


def rows_table(summary: dict, families: list[str] | None = None, short: bool = False,
               reports: list[str] | None = None) -> str:
    """The rows as a markdown table: overall mean ± sd and its 95 % interval, the families, costs;
    `reports` keeps only the rows of those reports ("test", "shuffle", ...)."""
    rows = {k: r for k, r in summary["rows"].items() if reports is None or r["report"] in reports}
    if not families:  # the long world's order first (reports list families alphabetically)
        from mirasol.corpora.long_world import FAMILIES

        found = list(dict.fromkeys(f for r in rows.values() for f in r["families"]))
        families = [f for f in FAMILIES if f in found] + [f for f in found if f not in FAMILIES]
    prior = summary["answer_prior"]
    head = ["row", "seeds", "all (mean ± sd)", "95 % interval", *families]
    head += ["GFLOP/sample", "train s (mean)"] if short else ["GFLOP/sample (train)", "training TFLOP", "parameters",
                                                              "train wall s (mean ± sd)", "eval s (mean)"]
    costs = len(head) - 4 - len(families)
    lines = [["answer prior", "", "", "", *(f"{prior[f]:.2f}" if f in prior else "" for f in families), *[""] * costs]]
    for label, r in rows.items():
        cells = [label, _seeds(r["seeds"]), "%.3f ± %.3f" % tuple(r["accuracy"]), _interval(r["interval"])]
        cells += ["%.2f ± %.2f" % tuple(r["families"][f]) if f in r["families"] else "-" for f in families]
        if "train_flops_per_sample" not in r:
            cells += ["(test time)"] + [""] * (costs - 1)
        elif short:
            train = r["train_seconds"]
            cells += [f"{r['train_flops_per_sample'] / 1e9:.2f}", "" if train is None else f"{train[0]:.0f}"]
        else:
            train, evals = r["train_seconds"], r["eval_seconds"]
            cells += [f"{r['train_flops_per_sample'] / 1e9:.3f}", f"{r['train_flops'] / 1e12:.1f}",
                      f"{r['parameters'] / 1e6:.2f} M", "" if train is None else "%.0f ± %.0f" % tuple(train),
                      "" if evals is None else f"{evals[0]:.0f}"]
        lines.append(cells)
    return _table(head, lines)


def _p(p: float | None) -> str:
    return "-" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def claims_table(summaries: list[dict]) -> str:
    """The claims of one or more summaries (one per step budget) as a markdown table."""
    head = ["claim", "row - against", "steps", "seeds", "difference", "95 % interval", "t (df)", "p",
            "detectable", "verdict"]
    lines = []
    for claim in CLAIMS:
        for summary in summaries:
            for c in summary["claims"]:
                if c["claim"] != claim.name:
                    continue
                lines.append([c["statement"], f"{c['row']} - {c['against']}", str(summary["steps"]),
                              f"{c['seeds'][0]} / {c['seeds'][1]}", f"{c['difference']:+.3f}",
                              _interval(c["interval"]),
                              "-" if c["t"] is None else f"{c['t']:.2f} ({c['df']:.1f})", _p(c["p"]),
                              "-" if c["detectable"] is None else f"{c['detectable']:.3f}", f"**{c['verdict']}**"])
    return _table(head, lines)


RULE_TEXT = (f"Overall test accuracy, mean over seeds; intervals are 95 % t intervals. A claim's p is Welch's "
             f"t-test (Welch-Satterthwaite df) on its two rows; detectable: the difference that test finds with "
             f"power {POWER:g} at alpha {ALPHA:g}, given the rows' sds and seeds. Verdicts: {VERDICT_RULE}.")


def format_table(summary: dict) -> str:
    """What `mirasol ablate` prints: the rows, the claims and the verdict rule."""
    out = [rows_table(summary)]
    if summary.get("claims"):
        out += ["", claims_table([summary])]
    return "\n".join(out + ["", RULE_TEXT])


# --- markdown blocks ---------------------------------------------------------------------------

BLOCK = re.compile(r"^<!-- ablate:(\w+)((?: [\w.]+=[^ >]+)*) -->\n(.*?)^<!-- /ablate:\1 -->", re.S | re.M)


def render_blocks(text: str, summaries: dict[int, dict], where: str = "the file") -> tuple[str, int]:
    """`text` with every marked block rewritten from `summaries` (step budget -> summary), and the
    number of blocks."""
    count = 0

    def render(match: re.Match) -> str:
        nonlocal count
        kind, options = match.group(1), dict(o.split("=", 1) for o in match.group(2).split())
        line = text.count("\n", 0, match.start()) + 1
        steps = int(options["steps"]) if "steps" in options else None
        if steps is not None and steps not in summaries:
            raise UsageError(f"{where}:{line}: the block asks for the {steps}-step results, but the results "
                             f"folder has {sorted(summaries) or 'none'}")
        if kind == "claims":
            body = claims_table([summaries[steps]] if steps is not None else list(summaries.values()))
        elif kind in ("rows", "short"):
            if steps is None:
                raise UsageError(f"{where}:{line}: an ablate:{kind} block needs steps=N")
            lists = {k: options[k].split(",") if k in options else None for k in ("families", "reports")}
            body = rows_table(summaries[steps], lists["families"], short=kind == "short", reports=lists["reports"])
        else:
            raise UsageError(f"{where}:{line}: unknown block ablate:{kind} (rows, short or claims)")
        count += 1
        return f"<!-- ablate:{kind}{match.group(2)} -->\n{body}\n<!-- /ablate:{kind} -->"

    new = BLOCK.sub(render, text)
    opened = len(re.findall(r"^<!-- ablate:\w+", text, re.M))  # markers start a line; prose may quote them
    if opened != count:
        raise UsageError(f"{where}: {opened} ablate blocks open but {count} close with <!-- /ablate:KIND -->")
    return new, count


def update_docs(paths: list[str | os.PathLike], summaries: dict[int, dict]) -> dict[str, int]:
    """Rewrite the marked blocks of each markdown file; returns the blocks written per file."""
    written = {}
    for path in map(Path, paths):
        text = path.read_text()
        new, count = render_blocks(text, summaries, str(path))
        if not count:
            raise UsageError(f"{path}: no <!-- ablate:KIND --> block to write")
        if new != text:
            path.write_text(new)
        written[str(path)] = count
    return written
