#!/usr/bin/env bash
# Issue 12's GPU checks, for a lent GPU machine (torch + CUDA, no pydantic): one training
# step of every generated and example torch model in every GPU configuration
# (../shared/gpu/train_smoke.py), then `archc train` against the bare training step
# (benchmarks/gpu_train_speed.py). Under 6 minutes on an H200 with 16 cores.
#
# Prepare here, once (ignored folder .gpu/):
#   mkdir -p .gpu/whl && cp ../shared/gpu/train_smoke.py .gpu/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .gpu/whl pydantic==2.14.4 pydantic_core==2.50.5 \
#       annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0
# Run there (device tool): command `bash benchmarks/gpu_check.sh`, carry [".gpu"].
set -euo pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-/tmp/archc-gpu-out}
mkdir -p "$out"
start=$(date +%s)

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/archc .
export PYTHONPATH=/tmp/archc:/tmp/site
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch, archc; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'archc', archc.__file__)"

echo "== train_smoke: every generated and example torch model"
rm -rf /tmp/examples && python3 -m archc build examples/ -b torch -o /tmp/examples -q
smoke=0
python3 .gpu/train_smoke.py generated/*_torch.py /tmp/examples/*_torch.py 2>&1 | tee "$out/train_smoke.log" || smoke=$?
echo "train_smoke exit $smoke after $(( $(date +%s) - start )) s"

echo "== archc train vs the bare step"
python3 benchmarks/gpu_train_speed.py --out "$out" 2>&1 | tee "$out/gpu_train_speed.log"
echo "done in $(( $(date +%s) - start )) s; train_smoke exit $smoke"
exit "$smoke"
