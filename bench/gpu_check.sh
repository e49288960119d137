#!/usr/bin/env bash
# One short call on a lent CUDA machine: the CUDA tests, the nano semantic tests rendered on the
# GPU, then the real-size bench (bench/gpu_suite.py). Logs and the bench report go to $OUT.
#
# The machine has its own torch and most of our requirements; the few it lacks travel as wheels
# in .whl/ (pip download --no-deps gguf ftfy wcwidth; see the device notes). PyAV is not needed:
# the nano renders save PNG frames.
#
#     bash bench/gpu_check.sh            # OUT=/some/folder to choose where the logs go
#     SUITE_BUDGET_S=180 bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
SITE=$(mktemp -d)
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE/site" .whl/*.whl || exit 1
fi
# the repository root is the package `wanflow`, as `pip install -e .` maps it
ln -sfn "$PWD" "$SITE/wanflow"
export PYTHONPATH="$SITE:$SITE/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

{
    date -u +"%Y-%m-%d %H:%M UTC"
    git rev-parse --short HEAD 2>/dev/null || echo "commit: unknown (no .git)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
} 2>&1 | tee "$OUT/machine.txt"

section() { echo; echo "=== $1 ($(date -u +%T))"; }

section "CUDA tests and their CPU neighbours"
timeout "${TESTS_TIMEOUT_S:-150}" python3 -m pytest -q -p no:cacheprovider -rs \
    tests/test_attention.py tests/test_block_swap.py tests/test_fp8_matmul.py tests/test_gguf.py \
    tests/test_moe_sampler.py tests/test_compute_dtype.py tests/test_gpu_suite.py 2>&1 | tee "$OUT/cuda_tests.log"

section "nano semantic tests, rendered on the GPU (headless runs pick CUDA, bf16)"
timeout "${NANO_TIMEOUT_S:-150}" python3 -m pytest -q -p no:cacheprovider -rs --durations=5 \
    tests/test_nano_t2v.py tests/test_nano_i2v.py tests/test_nano_moe.py tests/test_nano_loras.py \
    tests/test_nano_world.py 2>&1 | tee "$OUT/nano_cuda.log"

section "real-size bench"
timeout "${SUITE_TIMEOUT_S:-330}" python3 bench/gpu_suite.py --budget-s "${SUITE_BUDGET_S:-200}" --out-dir "$OUT" \
    2>&1 | tee "$OUT/suite.log"
section "done"
