#!/usr/bin/env bash
# Call 1 of 3 (training/gpu/README.md): installs part 1 and checks, in seconds, that the packages this project
# needs import and work there (versions, the GPU, datasets' worker processes, the training entry point).
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
source training/gpu/setup.sh || { echo "setup failed"; exit 1; }
python3 - <<'EOF' 2>&1 | tee "$OUT/check.log"
import importlib.metadata as metadata
import datasets, torch
names = ["torch", "transformers", "peft", "trl", "datasets", "accelerate", "pyarrow", "fsspec", "gguf", "huggingface-hub"]
print({name: metadata.version(name) for name in names})
print("GPU:", torch.cuda.is_available() and torch.cuda.get_device_name())
rows = datasets.Dataset.from_list([{"x": i} for i in range(64)]).map(lambda row: {"y": row["x"] * 2}, num_proc=4)
assert sum(rows["y"]) == 2 * sum(range(64))
import training.train  # noqa: F401  (trl, peft, the model package)
print("check ok")
EOF
