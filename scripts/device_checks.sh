#!/usr/bin/env bash
# The checks that need a GPU, as one call of the device tool (scripts/device_wheels.sh first):
#
#     run(command="bash scripts/device_checks.sh", carry=[".whl"], timeout_s=480)
#
# Installs the carried wheels into /tmp/site and metarl into /tmp/pkg, then runs, each with
# its own time limit (about 6 minutes in all) and its output under $OUT:
#   tests.log        the CUDA tests (MAML's and PEARL's learners on the GPU match the CPU);
#   meta_update.txt  one MAML-TRPO meta-update against the garage-style reference, on the
#                    device (docs/numbers.md), at bench_meta_update's shape and ML1's;
#   pearl.txt        PEARL's gradient steps per second on the GPU (issue: PEARL);
#   gpu.txt          the device. Here, on a CPU, `DEVICE=cpu PYTHON=.venv/bin/python
#                    OUT=/tmp/out bash scripts/device_checks.sh` runs the same steps.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 MUJOCO_GL=disable  # nothing renders; EGL may be missing there
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
if [ "$DEVICE" = cuda ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
    $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || { echo "installing the carried wheels failed: run scripts/device_wheels.sh here first"; exit 1; }
    # metarl as pyproject.toml lays it out (envs/ and configs/ inside the package), copied
    # from this checkout: no build step, no setuptools needed there.
    rm -rf /tmp/pkg && mkdir -p /tmp/pkg && cp -r metarl /tmp/pkg/ && cp -r envs /tmp/pkg/metarl/envs \
        && cp -r configs /tmp/pkg/metarl/configs || { echo "copying metarl failed"; exit 1; }
    export PYTHONPATH=/tmp/pkg:/tmp/site
fi
$PYTHON -c "import torch, metarl; print('torch', torch.__version__, 'device', '$DEVICE',
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" | tee -a "$OUT/gpu.txt"
status=0
step() {  # step NAME SECONDS COMMAND...: run, keep its output, remember a failure
    local name=$1 limit=$2; shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" > "$OUT/$name" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name"
    [ $rc -eq 0 ] || { echo "== $name failed (exit $rc)"; status=1; }
}
step tests.log 150 $PYTHON -m pytest -q -p no:cacheprovider tests/test_maml.py tests/test_pearl.py \
    -k "cuda or double_backward or on_the_device"
ml1_shape=""  # ML1 pick-place's batch (20 tasks x 10 x 500 steps): minutes for the reference on a CPU
[ "$DEVICE" = cuda ] && ml1_shape="&& $PYTHON scripts/bench_meta_update.py --device $DEVICE --repeats 3 --tasks 20 --episodes 10 --horizon 500"
step meta_update.txt 150 bash -c "$PYTHON scripts/bench_meta_update.py --device $DEVICE --repeats 5 $ml1_shape"
step pearl.txt 90 $PYTHON scripts/bench_pearl.py --device "$DEVICE" --steps 200
exit $status
