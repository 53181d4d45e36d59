#!/usr/bin/env bash
# Set up (if needed) and run the main job: synth a dataset, train the tiny model, evaluate it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
mirasol quickstart "$@"
