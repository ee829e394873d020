#!/usr/bin/env bash
# Set up .venv if needed (tools/bootstrap.sh) and run the whole test suite.
# Extra arguments go to pytest, e.g.  ./run_tests.sh tests/unit -x
set -euo pipefail
cd "$(dirname "$0")"
py=$(bash tools/bootstrap.sh | tail -n 1)
exec "$py" -m pytest "$@"
