#!/usr/bin/env bash
# Sourced by the device scripts on the bare GPU machine (training/gpu/README.md): installs the carried wheels and
# the data once per machine, and exports where they are. Work files live in one folder of the checkout
# (E2LLM_GPU_WORK, default runs/gpu-work: ignored, so it stays between the three calls to one warm machine).
work=${E2LLM_GPU_WORK:-$PWD/runs/gpu-work}
mkdir -p "$work"
if [ ! -f "$work/site.done" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$work/site" \
        .gpu-part1/wheels/*.whl || return 1
    touch "$work/site.done"
fi
# The configs read ../shared/data; on the bare machine it is the carried data (never replace a real one).
if [ ! -e ../shared/data ]; then
    mkdir -p ../shared/data && tar -C ../shared/data -xJf .gpu-part1/data.tar.xz || return 1
fi
export PYTHONPATH="$work/site:$work/packages" E2LLM_CACHE="$work/cache" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 \
    TOKENIZERS_PARALLELISM=false
