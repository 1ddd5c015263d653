#!/usr/bin/env bash
# Run ON THE LENT GPU MACHINE, from the repository root, after benchmarks/gpu_wheels.sh
# here:   run(command="bash benchmarks/gpu_checks.sh", carry=[".whl"], timeout_s=540)
# Installs the carried wheels, then: the whole test suite on CUDA (one switch), the
# invariance benchmark on a ViT-B/16 at 224 px (2,048 samples x 16 rotations), and the
# CAM benchmark at batch 64. Logs go to $OUT (or ./gpu-out), one file per step.
set -uo pipefail
out="${OUT:-gpu-out}"; mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="$PWD/src:/tmp/site" PYTHONUNBUFFERED=1
{ nvidia-smi -L; python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())"; } 2>&1 | tee "$out/machine.txt"
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log, go on regardless
    local name=$1 limit=$2; shift 2
    echo "=== $name"; timeout "$limit" "$@" > "$out/$name.log" 2>&1
    echo "exit $? ($name)"; tail -n 25 "$out/$name.log"
}
step pytest-cuda 240 python3 -m pytest -q -n 8 -p no:cacheprovider --device cuda
step invariance-vitb 150 python3 benchmarks/invariance_overhead.py --device cuda \
    --models vit_base_patch16_224 --image-size 224 --samples 2048 --params 16 \
    --batch-size 512 --no-tmeasures
step cam-speed 90 python3 benchmarks/cam_speed.py --device cuda --batch-size 64
