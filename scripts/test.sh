#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# The tests of pretrained backbones need the `hf` extra (transformers, peft); the quickstart does not.
pip install -q -e ".[dev,hf]"
python -m pytest -q "$@"
