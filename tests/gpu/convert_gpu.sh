#!/bin/bash
# GPU check of the checkpoint converter: a tiny GPT built and run with megatron-core on the GPU,
# saved with Megatron's dist-checkpointing (torch_dist), converted by the native converter, and the logits
# of Megatron's forward pass compared with the converted Hugging Face model's (max abs diff printed).
# For a machine with an NVIDIA GPU and a CUDA PyTorch, no network and no repo venv:
#   bash tests/gpu/convert_gpu.sh [pytest args]        (from anywhere; runs in the repo root)
# Python packages the machine lacks are installed from local wheels (WHEELS, default .whl/ in the repo
# root) into /tmp/site: megatron-core==0.16.1 (the cp312 manylinux wheel; it needs torch, numpy and
# packaging, which such images have). transformers, safetensors, tokenizers, pytest, PyYAML and tqdm
# are expected to be there; carry wheels for any that are not.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PYTHON="${PYTHON:-python3}"
WHEELS="${WHEELS:-.whl}"

missing=()
for module in megatron.core transformers safetensors tokenizers pytest yaml tqdm; do
    "${PYTHON}" -c "import ${module}" 2>/dev/null || missing+=("${module}")
done
if (( ${#missing[@]} )); then
    shopt -s nullglob
    wheels=("${WHEELS}"/*.whl)
    if (( ${#wheels[@]} == 0 )); then
        echo "error: missing Python modules (${missing[*]}) and no wheels in ${WHEELS}/" >&2
        exit 2
    fi
    echo "installing ${#wheels[@]} wheel(s) from ${WHEELS}/ into /tmp/site for: ${missing[*]}"
    "${PYTHON}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "${wheels[@]}"
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:${PYTHONPATH}}"
fi
"${PYTHON}" - <<'PY'
import torch, transformers, megatron.core
assert torch.cuda.is_available(), "no CUDA GPU visible to PyTorch"
print(f"GPU {torch.cuda.get_device_name(0)}; torch {torch.__version__}; transformers {transformers.__version__}; "
      f"megatron-core {megatron.core.__version__}")
PY
exec "${PYTHON}" -m pytest -s -q -p no:cacheprovider tests/test_convert_gpu.py "$@"
