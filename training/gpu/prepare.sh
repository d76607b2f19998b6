#!/usr/bin/env bash
# Builds, here on the CPU (PyPI reachable), what training/gpu/benchmark.sh needs on a bare GPU machine
# (torch 2.11 + transformers 5.17 + peft/accelerate/pyarrow/pandas, no trl, no datasets, no network):
#   .gpu-bundle/wheels/         trl, datasets and the two packages of datasets that image lacks (Python 3.12)
#   .gpu-bundle/architectures/  the embedded default's config.json + tokenizers, no weights (training.architectures)
#   .gpu-data -> ../shared/data a link: the device tool carries the data files named through it, never a copy
# Run from the repository root:  bash training/gpu/prepare.sh
set -euo pipefail
bundle=.gpu-bundle
rm -rf "$bundle" && mkdir -p "$bundle/wheels"
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$bundle/wheels" trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
python -m training.architectures --output "$bundle/architectures"
ln -sfn ../shared/data .gpu-data
du -shL "$bundle" $(sed -n 's/^\(\.gpu-data\/.*\)/\1/p' training/gpu/carry.txt) | sort -h
