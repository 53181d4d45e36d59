#!/usr/bin/env bash
# The checks that need a GPU, as one run sized for a lent machine (its steps' limits add up to
# 530 s): the `base` training step in bf16 with its MFU, the memory plan against the measured peak
# of FSDP steps of `base` and `mirasol3b`, and the test suite with CUDA visible. None of this has
# run on a GPU yet.
#
# The lent machine has Python 3.12 with a CUDA build of torch but no network, and lacks PyAV and
# webdataset, so their wheels travel with the working tree:
#
#   bash scripts/gpu_check.sh --wheels     # here, once per checkout: .whl/ (git ignores it)
#   device tool: run  command="bash scripts/gpu_check.sh"  carry=[".whl"]  timeout_s=600
#
# Each step has its own time limit, so a step that hangs cannot eat the others' time, and a step
# that fails is reported and the next one runs. Everything lands in $OUT (default /tmp/gpu_check):
# NAME.log per step, the benchmarks' JSON and summary.txt. GPU_CHECK_PRESET=tiny runs the step
# benchmark at toy size (to try the script on a CPU machine).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ "${1:-}" = "--wheels" ]; then
    mkdir -p .git/info
    grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
    # the versions this project's set-up installs here, built for the device's Python 3.12
    exec "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "av==18.1.0" "webdataset==1.0.2" "braceexpand==0.1.7"
fi

OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
if ls .whl/*.whl > /dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "installing .whl/ failed" >&2; exit 1; }
    export PYTHONPATH=/tmp/site:$PYTHONPATH
fi

step() {  # step NAME SECONDS COMMAND...: run it under a time limit into $OUT/NAME.log; note how it ended
    local name=$1 limit=$2 t0=$SECONDS
    shift 2
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: rc=$rc after $((SECONDS - t0)) s (limit $limit s)$([ $rc = 124 ] && echo ', timed out')" \
        | tee -a "$OUT/summary.txt"
    tail -n 30 "$OUT/$name.log"
    echo
}

: > "$OUT/summary.txt"
step env 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3; \"$PY\" -c '
import torch, av, webdataset
cuda = torch.cuda.is_available()
print(\"torch\", torch.__version__, \"| CUDA:\", torch.cuda.get_device_name() if cuda else \"none\", \"| PyAV\", av.__version__)
'"
step step 120 "$PY" -m mirasol.cli bench step --preset "${GPU_CHECK_PRESET:-base}" --precision bf16 \
    --combiner transformer --questions-per-clip 1 --batch 8,16,32 --out "$OUT/step.json"
step memory 200 "$PY" -m mirasol.cli bench memory --out "$OUT/memory.json"
# the suite as CI runs it, minus the slow end-to-end runs, spread over 8 processes where
# pytest-xdist is installed (it is on the lent machine); tests that need ../shared/samples or the
# serve extras skip there (neither travels)
parallel=$("$PY" -c "import xdist" 2> /dev/null && echo "-n 8")
step tests 180 "$PY" -m pytest -q -m "not slow" -p no:cacheprovider --maxfail 25 $parallel tests
cat "$OUT/summary.txt"
