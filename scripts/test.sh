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
# System tools some tests drive, from Debian's packages, installed where the script may; otherwise those
# tests say why they were skipped. The page's browser test drives Chromium (Playwright's own
# browser download is not used); the live-stream test of `mirasol watch` plays a clip over UDP
# with ffmpeg.
apt_install() {  # COMMAND PACKAGE WHAT
    if ! command -v "$1" >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "installing $2 for $3 (apt-get)"
        apt-get install -y -q "$2" >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$2" >/dev/null 2>&1; } \
            || echo "warning: could not install $2; $3 will be skipped"
    fi
}
apt_install chromium chromium "the browser test"
apt_install ffmpeg ffmpeg "the live-stream test"
python -m pytest -q "$@"
