#!/usr/bin/env bash
# Mutation testing of the modules where a silent error costs most (see [tool.mutmut] in
# pyproject.toml): mutmut changes one operator, constant or argument at a time and runs the tests
# that cover it; a surviving mutant is a bug the suite would miss. Too slow for every CI run
# (about half an hour for interventions + positions on 2 CPU cores); run it by hand:
#   bash scripts/mutate.sh            # then: mutmut results / mutmut show NAME
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet "mutmut>=3.3"
mutmut run "$@"
mutmut results | sed -n 's/.*: //p' | sort | uniq -c
