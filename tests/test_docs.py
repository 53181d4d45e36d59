"""The docs match the code: docs/design.md's package layout names every module of src/mirasol and
no other, every `mirasol ...` command in README.md parses and its `--help` runs, and the configs
and extras README names exist."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "mirasol"
DESIGN = ROOT / "docs" / "design.md"
README = ROOT / "README.md"
INDENT = 2  # spaces per level in the layout block


# --- docs/design.md's package layout ---------------------------------------------------------------
def layout_entries(text: str) -> list[tuple[str, int, str]]:
    """(path below src/mirasol, line number, line) for every `name.py` / `name/` entry of the
    fenced block that starts with `src/mirasol/`; the block's first unindented line after that ends it."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "src/mirasol/"), None)
    assert start is not None, f"{DESIGN.relative_to(ROOT)}: no package layout block (a line 'src/mirasol/')"
    entries, parents = [], []
    for number, line in enumerate(lines[start + 1:], start + 2):
        if not line.strip():
            continue
        if line.startswith("```") or not line.startswith(" "):
            break
        depth = (len(line) - len(line.lstrip(" "))) // INDENT - 1
        name = line.split()[0]
        parents = parents[:depth]
        if name.endswith("/"):
            parents.append(name.rstrip("/"))
            entries.append(("/".join(parents) + "/", number, line))
        elif name.endswith(".py"):
            entries.append(("/".join([*parents, name]), number, line))
    return entries


def package_modules() -> set[str]:
    """Every module under src/mirasol, as a path below it; packages' __init__.py stand for their folder."""
    return {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
            if p.name != "__init__.py" and "__pycache__" not in p.parts}


def package_folders() -> set[str]:
    return {p.relative_to(PACKAGE).as_posix() + "/" for p in PACKAGE.rglob("*")
            if p.is_dir() and ((p / "__init__.py").exists() or any(p.glob("*.yaml")))}


def test_design_layout_names_every_module_and_no_other():
    text = DESIGN.read_text()
    entries = layout_entries(text)
    listed = {path for path, _, _ in entries}
    modules, folders = package_modules(), package_folders()
    problems = []
    for path in sorted(modules - listed):
        folder, _, name = path.rpartition("/")
        indent = " " * (INDENT * (path.count("/") + 1))
        after = next((f"line {n} ({line.strip().split()[0]})" for p, n, line in reversed(entries)
                      if (p.startswith(folder + "/") if folder else "/" not in p)), None)
        where = (f"under `{folder}/`, e.g. after {after}" if folder else f"at the top level, e.g. after {after}") \
            if after else f"a new folder line `  {folder}/` and below it"
        problems.append(f"missing {path}: add {where}:\n{indent}{name:<{max(20 - len(indent) + 2, len(name) + 1)}} <what it holds>")
    for path, number, line in entries:
        if path.endswith("/"):
            if path not in folders:
                problems.append(f"line {number} names the folder {path}, which src/mirasol does not have: {line.strip()!r}")
        elif path not in modules:
            problems.append(f"line {number} names {path}, which src/mirasol does not have: remove it: {line.strip()!r}")
    assert not problems, f"{DESIGN.relative_to(ROOT)}, package layout:\n" + "\n".join(problems)


def test_layout_parser_reads_nesting_and_reports_both_ways():
    text = "```\nsrc/mirasol/\n  cli.py   x\n  media/   y\n    decode.py  z\n  gone.py  w\nconfigs/\n```\n"
    assert [p for p, _, _ in layout_entries(text)] == ["cli.py", "media/", "media/decode.py", "gone.py"]


# --- README's commands -----------------------------------------------------------------------------
def readme_commands(text: str) -> list[tuple[int, list[str], bool]]:
    """(line number, argv after `mirasol`, whole) of every command in README's code: indented and
    fenced blocks (whole commands; `\\` continuations joined, `#` comments dropped) and inline
    `mirasol ...` spans in the prose (often a command and an option only, so not whole).
    `torchrun ... -m mirasol.cli CMD ...` counts as `mirasol CMD ...`. Spans that show a form rather
    than a command (`<placeholder>`, `...`) are left out."""
    found = []
    lines = text.splitlines()
    in_fence, i = False, 0
    while i < len(lines):
        line, number = lines[i], i + 1
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            i += 1
            continue
        if in_fence or line.startswith("    "):
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i].strip()
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                words = []
            if words[:1] == ["mirasol"]:
                found.append((number, words[1:], True))
            elif "mirasol.cli" in words and words[:1] == ["torchrun"]:
                found.append((number, words[words.index("mirasol.cli") + 1:], True))
        else:
            for span in re.findall(r"`(mirasol [^`]+)`", line):
                if "<" not in span and "..." not in span and ": error" not in span:
                    found.append((number, shlex.split(span)[1:], False))
        i += 1
    return found


COMMANDS = readme_commands(README.read_text())


def test_readme_names_commands():
    subcommands = {argv[0] for _, argv, _ in COMMANDS if argv and not argv[0].startswith("-")}
    assert {"train", "evaluate", "ask", "convert", "prepare", "serve", "ablate"} <= subcommands, subcommands


@pytest.mark.parametrize("number,argv,whole", COMMANDS, ids=[f"README:{n}:{' '.join(a[:1])}" for n, a, _ in COMMANDS])
def test_readme_command_parses(number, argv, whole, monkeypatch):
    """A whole command parses as its parser reads it, and a `--config` it names loads (with the
    command's own overrides) from the checkout's root, where README's paths start. A span in the
    prose names a command and options that command has."""
    from mirasol.cli import build_parser, parse_args

    monkeypatch.chdir(ROOT)
    shown = f"README.md:{number}: `mirasol {shlex.join(argv)}`"
    parser = build_parser()
    if not whole:
        if argv and not argv[0].startswith("-"):
            assert argv[0] in parser.commands, f"{shown}: no such command"
            known = {o for action in parser.commands[argv[0]]._actions for o in action.option_strings}
        else:
            known = {o for action in parser._actions for o in action.option_strings}
        unknown = [w for w in argv if w.startswith("--") and w.split("=")[0] not in known]
        assert not unknown, f"{shown}: the command has no option {unknown}"
        return
    try:
        args = parse_args(parser, argv)
    except SystemExit as err:
        pytest.fail(f"{shown} does not parse (exit {err.code})")
    config = getattr(args, "config", None)
    if config:
        from mirasol.run_config import load_run_config

        load_run_config(config, getattr(args, "overrides", []))  # a ConfigError names what is wrong


@pytest.mark.parametrize("command", sorted({a[0] for _, a, _ in COMMANDS if a and not a[0].startswith("-")}))
def test_readme_command_help_runs(command):
    """`mirasol CMD --help` as a user runs it: its own process, exit 0, its usage line."""
    done = subprocess.run([sys.executable, "-m", "mirasol.cli", command, "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: mirasol {command}"), done.stdout[:200]


def test_readme_pip_extras_exist():
    import tomllib

    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = {e.strip() for group in re.findall(r'pip install -e "\.\[([^\]]+)\]"', README.read_text())
             for e in group.split(",")}
    assert named, "README names no extras"
    assert named <= extras, f"README.md installs extras pyproject.toml lacks: {sorted(named - extras)}"


def test_mirasol3b_preset_is_a_config_with_the_papers_size():
    """README names the `mirasol3b` preset: `--config mirasol3b` finds it, and it builds the paper's
    ~3 B parameters (counted on the meta device), about half of them in the audio-video part."""
    from mirasol.config import MirasolConfig
    from mirasol.cost import parameter_counts
    from mirasol.run_config import CONFIG_DIR, load_run_config, resolve_config_path

    assert resolve_config_path("mirasol3b") == CONFIG_DIR / "mirasol3b.yaml"
    run = load_run_config("mirasol3b")
    assert run.model == MirasolConfig.preset("mirasol3b")
    assert run.model.num_chunks * run.model.frames_per_chunk == 128
    assert abs(parameter_counts(run.model)["total"] - 3.04e9) / 3.04e9 < 0.02


def test_every_packaged_config_loads():
    from mirasol.run_config import CONFIG_DIR, load_run_config

    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert {"tiny", "small", "base", "mirasol3b", "gpt2-lora"} <= set(names)
    for name in names:
        if name == "gpt2-lora":
            pytest.importorskip("transformers")
        load_run_config(name)


@pytest.mark.parametrize("env,gpu,expected", [
    ({}, False, "the CPU build of torch==2.13.0 (no GPU found by nvidia-smi): a local wheel if pip finds one, "
                "else https://download.pytorch.org/whl/cpu"),
    ({}, True, "the CUDA build of torch==2.13.0 (nvidia-smi lists a GPU) from the default index"),
    ({"MIRASOL_TORCH": "cpu"}, True, "the CPU build of torch==2.13.0 (MIRASOL_TORCH=cpu)"),
    ({"MIRASOL_TORCH": "cuda", "MIRASOL_TORCH_INDEX": "https://download.pytorch.org/whl/cu128"}, False,
     "the CUDA build of torch==2.13.0 (MIRASOL_TORCH=cuda) from https://download.pytorch.org/whl/cu128"),
    ({"MIRASOL_TORCH": "skip"}, True, "none installed (MIRASOL_TORCH=skip)"),
])
def test_setup_picks_the_torch_readme_describes(env, gpu, expected, tmp_path):
    """scripts/setup.sh --torch-plan: the choice README describes, with a stand-in `nvidia-smi` that
    lists a GPU or fails as it does on a machine without one."""
    import os

    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n" if gpu else "#!/bin/sh\nexit 9\n")
    fake.chmod(0o755)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MIRASOL_TORCH")}
    environ.update(env, PATH=f"{tmp_path}:{environ['PATH']}")
    done = subprocess.run(["bash", "scripts/setup.sh", "--torch-plan"], cwd=ROOT, env=environ, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout, done.stdout


def test_setup_refuses_an_unknown_torch_choice():
    import os

    done = subprocess.run(["bash", "scripts/setup.sh", "--torch-plan"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "MIRASOL_TORCH": "gpu"}, timeout=60)
    assert done.returncode == 2
    assert "MIRASOL_TORCH=gpu; use auto, cpu, cuda or skip" in done.stderr
