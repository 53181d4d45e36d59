#!/usr/bin/env bash
# One-time set-up, safe to re-run: a virtual environment in .venv with torch==2.13.0 and this
# package with its test extras.
#
# Which torch build (the pin stays 2.13.0 whatever the build):
#   MIRASOL_TORCH=auto   (default) cuda where `nvidia-smi` lists a GPU, else cpu
#   MIRASOL_TORCH=cpu    the CPU build: a torch==2.13.0 wheel pip finds without an index (a local
#                        wheelhouse, e.g. PIP_FIND_LINKS) if there is one, else the CPU index
#                        (MIRASOL_TORCH_INDEX, default https://download.pytorch.org/whl/cpu);
#                        a plain `pip install torch` on Linux would fetch several GB of CUDA wheels
#   MIRASOL_TORCH=cuda   pip's default index (PyPI's Linux wheels are CUDA builds), or
#                        MIRASOL_TORCH_INDEX, e.g. https://download.pytorch.org/whl/cu128
#   MIRASOL_TORCH=skip   install no torch: use the one already in .venv (an error if there is none)
# A torch already in .venv is kept. `bash scripts/setup.sh --torch-plan` prints the choice and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_PIN="torch==2.13.0"
CPU_INDEX="https://download.pytorch.org/whl/cpu"

mode=${MIRASOL_TORCH:-auto}
reason="MIRASOL_TORCH=$mode"
if [ "$mode" = auto ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q "^GPU"; then
        mode=cuda reason="nvidia-smi lists a GPU"
    else
        mode=cpu reason="no GPU found by nvidia-smi"
    fi
fi
case "$mode" in
    cpu) index=${MIRASOL_TORCH_INDEX:-$CPU_INDEX} ;;
    cuda) index=${MIRASOL_TORCH_INDEX:-} ;;
    skip) index= ;;
    *) echo "setup.sh: error: MIRASOL_TORCH=$mode; use auto, cpu, cuda or skip" >&2; exit 2 ;;
esac

if [ "${1:-}" = "--torch-plan" ]; then
    case "$mode" in
        cpu) echo "torch: the CPU build of $TORCH_PIN ($reason): a local wheel if pip finds one, else $index" ;;
        cuda) echo "torch: the CUDA build of $TORCH_PIN ($reason) from ${index:-the default index}" ;;
        skip) echo "torch: none installed ($reason); the one in .venv is used" ;;
    esac
    exit 0
fi

if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
    case "$mode" in
        skip)
            echo "setup.sh: error: MIRASOL_TORCH=skip, but .venv has no torch; install one into .venv" \
                 "(.venv/bin/pip install $TORCH_PIN ...) or unset MIRASOL_TORCH" >&2
            exit 1 ;;
        cpu)
            echo "installing the CPU build of $TORCH_PIN ($reason)"
            # A local wheel first (no index is asked), then its dependencies from the usual indexes;
            # without one, the CPU index. Both keep the exact pin.
            if pip install -q --no-compile --no-index --no-deps "$TORCH_PIN" 2>/dev/null; then
                pip install -q --no-compile "$TORCH_PIN"
            else
                pip install -q --no-compile "$TORCH_PIN" --index-url "$index"
            fi ;;
        cuda)
            echo "installing the CUDA build of $TORCH_PIN ($reason)"
            pip install -q --no-compile "$TORCH_PIN" ${index:+--index-url "$index"} ;;
    esac
fi
MIRASOL_TORCH_MODE=$mode python -W ignore::UserWarning - <<'PY'
import os, torch
build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"
print(f"torch {torch.__version__} ({build} build)")
if os.environ["MIRASOL_TORCH_MODE"] == "cuda" and not torch.version.cuda:
    print("warning: a CUDA build was asked for but .venv has a CPU build; remove .venv and re-run with "
          "MIRASOL_TORCH_INDEX set to a CUDA index, e.g. https://download.pytorch.org/whl/cu128")
PY
# torch is already satisfied here, so resolving the package's dependencies pulls no other build.
pip install -q --no-compile -e ".[dev]"
# --no-compile: pip would byte-compile every module of every package (most of them torch's), while
# a run imports a few hundred of them (benchmarks/quickstart-time.md). Those are compiled here,
# by importing what the commands and the tests use, with byte-code writing on.
env -u PYTHONDONTWRITEBYTECODE python - <<'PY'
import matplotlib
matplotlib.use("Agg")
import av, matplotlib.pyplot, pytest, torch
import mirasol.cli, mirasol.corpora.synth, mirasol.eval.evaluate, mirasol.quickstart, mirasol.train.loop
print(f"mirasol ready: torch {torch.__version__}, PyAV {av.__version__}")
PY
