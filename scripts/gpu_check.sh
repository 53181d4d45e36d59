#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run of about 12 minutes at most (the steps' time limits
# add up to 710 s; GPU_CHECK_ONLY runs fewer). Run it from a checkout on a machine with a GPU and
# the package installed (`bash scripts/setup.sh`, which picks the CUDA build of torch where
# `nvidia-smi` lists a GPU):
#
#   bash scripts/gpu_check.sh                  # writes to $OUT (default /tmp/gpu_check)
#
# It runs .venv/bin/python where the set-up made one, else python3 (PYTHON=... overrides).
#
# What it checks, one step each:
#   env     the GPU, the driver, and that torch sees CUDA (the run stops here if it does not);
#   tests   the test suite without its slow end-to-end runs, with CUDA visible;
#   step    `mirasol bench step` of the `base` preset in bf16 at batch 8, 16 and 32 (GPU_CHECK_BATCH):
#           the step time, model FLOP/s and MFU against the device's bf16 peak (docs/scaling.md);
#   compile the same with the forward through torch.compile, at batch 32;
#   memory  `mirasol bench memory`: the per-GPU memory plan against the measured peak of FSDP
#           steps of `base` and `mirasol3b` with activation checkpointing.
# GPU_CHECK_ONLY=env,tests,step runs only the steps named (env always runs).
# Each step has its own time limit, so a step that hangs cannot eat the others' time, and a step
# that fails is reported and the next one runs. $OUT receives NAME.log per step, the benchmarks'
# JSON (step.json, memory.json) and summary.txt with each step's exit status and time; the script
# exits non-zero when any step failed.
#
# A GPU machine without network that has a CUDA torch but lacks PyAV, webdataset and the serve extra:
# on a machine with network, `bash scripts/gpu_check.sh --wheels [PYTHON_VERSION]` (default 3.12, the
# GPU machine's Python) downloads their wheels into .whl/ (kept out of git); copy the checkout with
# .whl/ over, and the run installs them into a scratch folder first.
# GPU_CHECK_PRESET=tiny runs the step benchmark at toy size and skips the GPU requirement, to try
# the script on a CPU machine.
set -uo pipefail
cd "$(dirname "$0")/.."
# the set-up's environment where there is one, else the python on PATH (PYTHON=... to choose)
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}

if [ "${1:-}" = "--wheels" ]; then
    exclude=$(git rev-parse --git-path info/exclude 2>/dev/null) && mkdir -p "$(dirname "$exclude")" \
        && { grep -qx "/.whl/" "$exclude" 2>/dev/null || echo "/.whl/" >> "$exclude"; }
    # the versions scripts/setup.sh installs, built for the GPU machine's Python
    exec "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "${2:-3.12}" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "av==18.1.0" "webdataset==1.0.2" "braceexpand==0.1.7" \
        "fastapi==0.163.2" "starlette==1.10.0" "pydantic==2.14.4" "pydantic_core==2.50.5" \
        "typing-inspection==0.4.5" "annotated-types==0.8.0" "opentelemetry-api==1.45.2" \
        "uvicorn==0.54.0" "python-multipart==0.0.34"
fi

OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if ls .whl/*.whl > /dev/null 2>&1; then
    site=$(mktemp -d)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
        || { echo "installing .whl/ failed" >&2; exit 1; }
    export PYTHONPATH=$site:$PYTHONPATH
fi

ONLY=${GPU_CHECK_ONLY:-env,tests,step,compile,memory}
step() {  # step NAME SECONDS COMMAND...: run it under a time limit into $OUT/NAME.log; note how it ended
    local name=$1 limit=$2 t0=$SECONDS
    shift 2
    case ",$ONLY,env," in *",$name,"*) ;; *) return 0 ;; esac
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: rc=$rc after $((SECONDS - t0)) s (limit $limit s)$([ $rc = 124 ] && echo ', timed out')" \
        | tee -a "$OUT/summary.txt"
    tail -n 30 "$OUT/$name.log"
    echo
    [ $rc = 0 ] || failed=$((failed + 1))
    return $rc
}

failed=0
: > "$OUT/summary.txt"
# a CPU-only torch would turn every later step into a CPU run, so no GPU ends the check here
need_gpu=$([ -n "${GPU_CHECK_PRESET:-}" ] && echo 0 || echo 1)
step env 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3; \"$PY\" -c '
import sys, torch, av, webdataset
cuda = torch.cuda.is_available()
print(\"torch\", torch.__version__, \"| CUDA:\", torch.cuda.get_device_name() if cuda else \"none\", \"| PyAV\", av.__version__)
sys.exit(0 if cuda or not $need_gpu else \"no CUDA device visible to torch: install the CUDA build (MIRASOL_TORCH=cuda bash scripts/setup.sh)\")
'" || { cat "$OUT/summary.txt"; exit 1; }
# the suite as CI runs it, minus the slow end-to-end runs, over 8 processes where pytest-xdist is
# installed; tests whose optional extras are missing say so and skip
parallel=$("$PY" -c "import xdist" 2> /dev/null && echo "-n 8")
step tests 240 "$PY" -m pytest -q -m "not slow" -p no:cacheprovider --maxfail 40 -rfE $parallel tests
step step 90 "$PY" -m mirasol.cli bench step --preset "${GPU_CHECK_PRESET:-base}" --precision bf16 \
    --combiner transformer --questions-per-clip 1 --batch "${GPU_CHECK_BATCH:-8,16,32}" --out "$OUT/step.json"
step compile 150 "$PY" -m mirasol.cli bench step --preset "${GPU_CHECK_PRESET:-base}" --precision bf16 \
    --combiner transformer --questions-per-clip 1 --batch 32 --compile --out "$OUT/compile.json"
step memory 200 "$PY" -m mirasol.cli bench memory --out "$OUT/memory.json"
cat "$OUT/summary.txt"
echo "$failed step(s) failed"
exit $((failed > 0))
