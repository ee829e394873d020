#!/usr/bin/env bash
# Create or reuse the virtual environment at .venv and install everything the project needs,
# Horovod 0.28.1 built for MXNet with Gloo included. Idempotent: a stamp file records the hash of
# the inputs, and a second run with unchanged inputs does nothing.
#
# Usage: bash tools/bootstrap.sh      (prints the path of the venv's python on its last line)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
py="$venv/bin/python"
stamp="$venv/.gluon_elastic_stamp"
horovod_version=0.28.1

want=$(cat "$root/requirements.txt" "$root/setup.py" "$root/tools/bootstrap.sh" | sha256sum | cut -c1-16)
if [ -x "$py" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "$py"
  exit 0
fi

log() { echo "[bootstrap] $*" >&2; }
base_python=${PYTHON:-}
if [ -z "$base_python" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      base_python=$cand; break
    fi
  done
fi
[ -n "$base_python" ] || { log "Python 3.11 is required (set PYTHON=/path/to/python3.11)"; exit 2; }

if [ ! -x "$py" ]; then
  log "creating virtual environment at $venv"
  "$base_python" -m venv "$venv"
fi
pip() { "$py" -m pip --disable-pip-version-check "$@"; }

log "installing requirements (mxnet, numpy<1.24, gluoncv, mlxtend, pytest)"
pip install -q --upgrade "pip<25" "setuptools<70" wheel >&2
# Horovod's build needs these present in the venv because it is built without isolation.
pip install -q psutil pyyaml cloudpickle packaging cffi >&2
pip install -q -r "$root/requirements.txt" >&2

if ! "$py" -c "import horovod, horovod.mxnet; assert horovod.__version__ == '$horovod_version'" 2>/dev/null; then
  log "building horovod==$horovod_version for MXNet with Gloo (several minutes on 2 cores; pip caches the wheel)"
  HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
  HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 \
  HOROVOD_CPU_OPERATIONS=gloo MAKEFLAGS=-j2 \
    pip install --no-build-isolation "horovod==$horovod_version" >&2
fi
"$py" -c "import horovod.mxnet as hvd; assert hvd.gloo_built(), 'horovod was built without Gloo'" >&2

log "installing gluon_elastic in editable mode"
pip install -q --no-deps -e "$root" >&2
# Build the compiled update kernels now (cached under ~/.cache/gluon_elastic) rather than in the
# first training process; without a compiler the trainer falls back to MXNet's kernels.
"$py" -c "from gluon_elastic import kernels; kernels.load()" >&2
echo "$want" > "$stamp"
log "environment ready"
echo "$py"
