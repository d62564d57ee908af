#!/usr/bin/env bash
# The GPU checks of issue 12 as one script, for a machine with a CUDA GPU (run from the repository root):
#   1. the CUDA tests (tests/test_dtypes.py: half-precision prune + refit on the GPU, fused SDPA kernels with the
#      padded dims, fine-tuning on the GPU, the text pipeline on the GPU);
#   2. benchmarks/gpu_latency.py (DeiT-T/S/B original vs pruned, batch 1 and 64, fp16);
#   3. benchmarks/gpu_rounding.py (which multiple kept dims should be rounded to on this GPU);
#   4. benchmarks/latency_targets.py on the GPU (DeiT-S at 50% / 30% of its measured latency, fp16);
#   5. benchmarks/prune_speed.py on the GPU (the default pipeline, DeiT-B with the DeiT_b table, 64 images).
# Each step's output goes to $OUT (default /tmp/gpu-out); a step that fails or runs out of time does not stop the
# others. Python packages missing on the machine can be given as wheels in .whl/ (installed to /tmp/site).
#
#   bash benchmarks/gpu_session.sh
#   STEPS="tests gpu_latency" bash benchmarks/gpu_session.sh     # only these steps (names as in $OUT, no suffix)
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
T0=$(date +%s)
step() {  # step NAME SECONDS COMMAND...: run with a time limit, output to $OUT/NAME and to stdout
    local name=$1 limit=$2
    shift 2
    if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" ${name%.*} "* ]]; then
        return
    fi
    echo "=== $name (limit ${limit}s, at +$(($(date +%s) - T0))s): $*"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name"
    echo "=== $name: rc ${PIPESTATUS[0]}"
}

{
    nvidia-smi -L
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,utilization.gpu --format=csv
    $PY -c "import torch, transformers, sys; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', \
torch.version.cuda, 'transformers', transformers.__version__, 'gpu', torch.cuda.get_device_name()); \
import optimum_snp, pyarrow, datasets; print('optimum_snp', optimum_snp.__version__, 'from', optimum_snp.__file__, \
'pyarrow', pyarrow.__version__, 'datasets', datasets.__version__)"
    nproc
} 2>&1 | tee "$OUT/env.log"

step tests.log "${LIMIT_TESTS:-140}" $PY -m pytest -q -rs -p no:cacheprovider tests/test_dtypes.py
step gpu_latency.md "${LIMIT_LATENCY:-100}" $PY benchmarks/gpu_latency.py --batch-sizes 1 64 256 --graphs --unfused
step rounding.md "${LIMIT_ROUNDING:-130}" $PY benchmarks/gpu_rounding.py ${ROUNDING_ARGS:---csv $OUT/rounding_micro.csv}
step latency_targets.md "${LIMIT_TARGETS:-100}" $PY benchmarks/latency_targets.py --skip-digits --device cuda \
    --dtype float16 ${TARGETS_ARGS:---batch-sizes 1 64 256 --keep 0.5 0.3}
step prune_speed.log "${LIMIT_PRUNE:-70}" $PY benchmarks/prune_speed.py --device cuda --ratio-table DeiT_b
echo "=== all steps done in $(($(date +%s) - T0)) s"
