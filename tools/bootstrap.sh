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

# The multi-host tests (tests/multihost) need sshd, ip and tc. Checked before the stamp: a fresh
# machine with a reused .venv still gets them. Only as root, with apt-get; elsewhere those tests
# skip with the reason.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
  [ -x /usr/bin/ssh ] || missing+=(openssh-client)
  command -v ip >/dev/null && command -v tc >/dev/null || missing+=(iproute2)
  command -v unshare >/dev/null || missing+=(util-linux)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "[bootstrap] installing ${missing[*]} for the multi-host tests (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
      || echo "[bootstrap] could not install ${missing[*]}; the multi-host tests will say why" >&2
  fi
fi

want=$(cat "$root/requirements.txt" "$root/setup.py" "$root/tools/bootstrap.sh" \
  "$root/tools/patch_horovod.py" | sha256sum | cut -c1-16)
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

# Horovod is built from its source release with the fixes of tools/patch_horovod.py (a Gloo bug
# that stalls survivors for the Gloo timeout after a death). The wheel is kept under
# ~/.cache/gluon_elastic/wheels, named by the fixes' hash, so a new checkout reuses it.
fixes=$("$py" "$root/tools/patch_horovod.py" --fingerprint)
horovod_stamp="$venv/.horovod_fixes"
wheels="${XDG_CACHE_HOME:-$HOME/.cache}/gluon_elastic/wheels/horovod-$horovod_version-$fixes"
if ! "$py" -c "import horovod, horovod.mxnet; assert horovod.__version__ == '$horovod_version'" 2>/dev/null \
    || [ "$(cat "$horovod_stamp" 2>/dev/null)" != "$fixes" ]; then
  if ! ls "$wheels"/horovod-*.whl >/dev/null 2>&1; then
    log "building horovod==$horovod_version for MXNet with Gloo, with the fixes of tools/patch_horovod.py (several minutes on 2 cores)"
    src=$(mktemp -d)
    pip download -q --no-binary :all: --no-deps "horovod==$horovod_version" -d "$src" >&2
    tar xzf "$src/horovod-$horovod_version.tar.gz" -C "$src"
    "$py" "$root/tools/patch_horovod.py" "$src/horovod-$horovod_version"
    mkdir -p "$wheels.tmp"
    HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
    HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 \
    HOROVOD_CPU_OPERATIONS=gloo MAKEFLAGS=-j2 \
      pip wheel -q --no-build-isolation --no-deps -w "$wheels.tmp" "$src/horovod-$horovod_version" >&2
    rm -rf "$wheels" && mv "$wheels.tmp" "$wheels"
    rm -rf "$src"
  fi
  pip install -q --no-deps --force-reinstall "$wheels"/horovod-*.whl >&2
  echo "$fixes" > "$horovod_stamp"
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
