#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# The tests of pretrained backbones need the `hf` extra (transformers, peft); the quickstart does not.
# The serve tests need the `serve` extra, `serve-gradio` (the Gradio page) and `serve-test` (httpx,
# Playwright's Python API). The export tests read the model card with huggingface_hub (`hub`). The
# `lmms-eval` extra is left out (docs/lmms-eval.md: its torchvision is a CUDA build that breaks
# transformers on the CPU torch); its tests drive the model through a stand-in instead.
pip install -q -e ".[dev,hf,hub,serve,serve-gradio,serve-test]"
# The page's browser test drives the system's Chromium (Debian's package; Playwright's own browser
# download is not used). Installed where the script may (root with apt-get); otherwise that test says why it was skipped.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing chromium for the browser test (apt-get)"
    apt-get install -y -q chromium >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
        || echo "warning: could not install chromium; the browser test will be skipped"
fi
python -m pytest -q "$@"
