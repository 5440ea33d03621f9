#!/usr/bin/env bash
# Parity with real pyreft 0.1.0 / pyvene 0.1.8: export reft adapters, load them with
# pyreft.ReftModel.load, compare outputs (to 1e-4); and import an adapter pyreft saved itself.
#
# pyreft pins transformers 4.45.1, so it lives in its own virtual environment ($PYREFT_VENV,
# default /tmp/pyreft-venv), made here on first use: the CPU torch this machine keeps on disk,
# transformers 4.45.1, pyreft and pyvene without their (large) declared dependencies, and only the
# few modules they import at run time.
#
#   bash scripts/check_pyreft.sh [--work DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${PYREFT_VENV:-/tmp/pyreft-venv}"
if ! "$VENV/bin/python" -c "import pyreft" >/dev/null 2>&1; then
    python -m venv "$VENV"
    "$VENV/bin/pip" install --quiet torch==2.13.0
    "$VENV/bin/pip" install --quiet transformers==4.45.1 "huggingface-hub<1.0" "datasets<4" matplotlib
    "$VENV/bin/pip" install --quiet --no-deps pyreft==0.1.0 pyvene==0.1.8
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
python bench/pyreft_parity.py --pyreft-python "$VENV/bin/python" "$@"
