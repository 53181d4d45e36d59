#!/usr/bin/env bash
# One-time set-up, safe to re-run: a virtual environment in .venv with the CPU build of PyTorch
# (never the CUDA wheels on a machine without a GPU) and this package with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch" 2>/dev/null; then
    # Pinned: on this project's machines pip finds the local CPU build of exactly this version.
    # A bare or ranged `torch` would take the newest release with several GB of CUDA wheels.
    pip install -q --no-compile "torch==2.13.0"
fi
# torch is already satisfied here, so resolving the package's dependencies pulls no other build.
pip install -q --no-compile -e ".[dev]"
# --no-compile: pip would byte-compile every module of every package (about 11,000 files, most of
# them torch's: 30 s of a 2-core machine's set-up), while a run imports a few hundred of them. Those
# are compiled here, by importing what the commands and the tests use, with byte-code writing on.
env -u PYTHONDONTWRITEBYTECODE python - <<'PY'
import matplotlib
matplotlib.use("Agg")
import av, matplotlib.pyplot, pytest, torch
import mirasol.cli, mirasol.corpora.synth, mirasol.eval.evaluate, mirasol.quickstart, mirasol.train.loop
print(f"mirasol ready: torch {torch.__version__}, PyAV {av.__version__}")
PY
