#!/usr/bin/env bash
# The prepared GPU check: one script, at most 8 minutes on one CUDA GPU. From the repository
# root, with retinafocal's environment (torch, torchvision, detectron2, pycocotools):
#
#     tools/gpu_check.sh [OUT_DIR]        # default: gpu_check/
#
# Steps; each has its own time limit (all together under 8 minutes), and a step that fails or
# runs out of time is recorded in OUT_DIR/steps.tsv while the next one runs:
#   env             GPU, torch, CUDA, detectron2 and retinafocal.compat's workarounds in use
#   bench           tools/benchmark_detectors.py --device cuda at 800 x 1067 and 600 x 800:
#                   the realistic regime, fp32 / AMP / bf16 / compiled loss, ours vs detectron2
#                   vs torchvision
#   tests           the GPU tests (pytest -m gpu): CUDA against CPU, channels-last on cuDNN,
#                   an AMP step, the compiled (Triton) loss, the scripted model, NCCL
#   train_nccl      train_net.py's main inside launch's distributed worker (NCCL process group),
#                   50 iterations of the embedded recipe on the GPU, then its evaluation
#   train_amp       the same 50 iterations with SOLVER.AMP.ENABLED (no evaluation)
#   train_compiled  the same with AMP and MODEL.RETINAFOCAL.LOSS.COMPILE (Triton loss kernels)
#   train_bf16/fp16 (issue 15) MODEL.RETINAFOCAL.PRECISION runs, when that key exists (fp16
#                   with SOLVER.AMP.ENABLED, which it needs for gradient scaling)
#   report          OUT_DIR/GPU_CHECK.md: the dated table for README, with the GPU's name
# Its Python parts are in tools/gpu_check.py.
#
# GPU_CHECK_DEVICE=cpu runs the steps that make sense on a CPU (gloo instead of NCCL; bf16 but no
# fp16, AMP or compiled-loss runs), so that the script itself is tested without a GPU
# (tests/tools/test_gpu_check.py). GPU_CHECK_ITERS (default 50), GPU_CHECK_TRAIN_OPTS (extra
# train_net.py overrides, shell-quoted) and GPU_CHECK_BENCH_ARGS (extra benchmark arguments)
# shrink it; GPU_CHECK_BUDGET_S (default 470) is the time all steps may take together.
set -u -o pipefail

OUT=${1:-gpu_check}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
ITERS=${GPU_CHECK_ITERS:-50}
PY=${PYTHON:-python}
BUDGET_S=${GPU_CHECK_BUDGET_S:-470}
read -r -a BENCH_ARGS <<< "${GPU_CHECK_BENCH_ARGS:-}"

cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
: > "$OUT/steps.tsv"
START=$SECONDS

# step NAME LIMIT_S COMMAND...: run COMMAND with its output in OUT/NAME.log, for at most LIMIT_S
# seconds and never past the budget; append "NAME <tab> exit code <tab> seconds" to steps.tsv.
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET_S - (SECONDS - START)))
    if ((left < 15)); then
        printf '%s\tskipped\t0\n' "$name" >> "$OUT/steps.tsv"
        echo "== $name: skipped (time budget spent)"
        return 0
    fi
    ((limit > left)) && limit=$left
    echo "== $name (at most ${limit} s)"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$OUT/steps.tsv"
    echo "   exit $rc after $((SECONDS - t0)) s, log: $OUT/$name.log"
    return "$rc"
}

train() {  # train NAME LIMIT_S [KEY VALUE ...]
    local name=$1 limit=$2
    shift 2
    step "$name" "$limit" "$PY" tools/gpu_check.py train "$OUT" "$name" "$DEVICE" "$ITERS" "$@"
}

if ! step env 60 "$PY" tools/gpu_check.py env "$OUT" "$DEVICE"; then
    cat "$OUT/env.log"
    exit 1
fi
# The benchmark runs first: the GPU table (issue 15) is what a short lease is for. Realistic
# regime; on CUDA fp32 / AMP / bf16 / compiled loss at both sizes, each size's results written
# as it ends, so a step cut by its limit keeps the sizes it finished.
step bench 300 "$PY" tools/benchmark_detectors.py --device "$DEVICE" --memory-repeats 1 \
    --iters 10 20 5 --warmup 3 --output "$OUT/benchmark.json" "${BENCH_ARGS[@]}"
step tests 120 "$PY" -m pytest tests -m gpu -q -p no:cacheprovider -rs
train train_nccl 90
if [[ $DEVICE == cuda* ]]; then
    train train_amp 60 SOLVER.AMP.ENABLED True DATASETS.TEST "()"
    train train_compiled 90 SOLVER.AMP.ENABLED True MODEL.RETINAFOCAL.LOSS.COMPILE True \
        DATASETS.TEST "()"
fi
# ---- issue 15: reduced-precision runs (MODEL.RETINAFOCAL.PRECISION: fp32 / bf16 / fp16) ----
# Its GPU benchmark rows come from tools/benchmark_detectors.py itself (the bench step).
if "$PY" tools/gpu_check.py has-precision 2> /dev/null; then
    train train_bf16 45 MODEL.RETINAFOCAL.PRECISION bf16 DATASETS.TEST "()"
    if [[ $DEVICE == cuda* ]]; then  # fp16 trains with AMPTrainer's gradient scaling
        train train_fp16 45 MODEL.RETINAFOCAL.PRECISION fp16 SOLVER.AMP.ENABLED True \
            DATASETS.TEST "()"
    fi
else
    echo "== train_bf16, train_fp16: skipped (no MODEL.RETINAFOCAL.PRECISION in this checkout)"
fi
# ----------------------------------------------------------------------------------------------
"$PY" tools/gpu_check.py report "$OUT"
echo "total $((SECONDS - START)) s"
