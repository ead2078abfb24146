#!/usr/bin/env bash
# Download into .whl/ the wheels that bench/gpu_check.py needs and the lent GPU machine lacks.
#
# That machine (docs/training.md#checking-a-gpu) reaches no package registry. Its python3 (3.12)
# already has torch, timm, numpy, pandas, scipy, tensorboard, psutil, pytest, pillow, tqdm and rich;
# it lacks decord, PyAV, submitit and Hydra/OmegaConf, which the code and the test suite import. Run
# this where pip reaches PyPI, then carry .whl with the device command (~50 MB; .whl/ is git-ignored).
# Versions are pyproject.toml's pins.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
pins=$("$PYTHON" - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
wanted = ("decord", "av", "submitit", "omegaconf", "hydra-core")
print(" ".join(d for d in deps if re.split("[=<>]", d)[0] in wanted))
PY
)
mkdir -p .whl
# omegaconf 2.3 needs antlr4-python3-runtime 4.9.*, which PyPI ships as a source archive only: build its wheel here.
"$PYTHON" -m pip wheel --no-deps -q -w .whl "antlr4-python3-runtime==4.9.3"
"$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux2010_x86_64 --platform manylinux1_x86_64 -q -d .whl $pins
ls -l .whl
du -sh .whl
