#!/usr/bin/env bash
# Download, here, the wheels the GPU machine lacks, into .whl/ (git-ignored), for
# scripts/device_checks.sh to install there. That machine has Python 3.12 with torch, numpy,
# scipy, matplotlib, pyyaml, tqdm, threadpoolctl, absl-py and etils, and no network. The
# versions are this checkout's .venv's (run `make setup` first), so both machines run the
# same simulators. wandb, stable-baselines3, ray and metaworld (a 37 MB wheel; the checks
# below use MuJoCo's and nav2d's families) are imported only where used: not carried.
#
#     scripts/device_wheels.sh && du -sh .whl
#
# A call carries the whole checkout (results/ included) and .whl: 64 MiB together.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
names=(gymnasium farama-notifications mujoco glfw pyopengl omegaconf)
pins=()
for name in "${names[@]}"; do
    version=$($PY -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
    [ -n "$version" ] || { echo "$name is not installed in .venv: run make setup first" >&2; exit 1; }
    pins+=("$name==$version")
done
rm -rf .whl && mkdir .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "${pins[@]}"
ls -1 .whl
