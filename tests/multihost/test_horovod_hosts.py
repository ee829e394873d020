"""Elastic Horovod across network-namespace hosts, launched over real ``ssh``.

Every job runs tests/workers/horovod_elastic.py under ``python -m gluon_elastic.horovodrun`` on the
head, with each worker (rank 0 included) on a namespace host of its own (tests/hosts.py: real
``sshd``, one interface name everywhere, names in ``/etc/hosts``), and is checked with the
invariants of the one-machine tests (tests/dist/horovod_records.py): exit code 0, identical
parameters and momentum on every rank after every reset, every sample of every epoch exactly once
in committed work, no restart behind the last commit; then no process left on any host and
nothing of the hosts left after the teardown.

- ``resize``: 2 hosts, a third joins at iteration 6 (grow by a host), the second leaves at 12
  (shrink by a host);
- ``host_loss``: 3 hosts; at iteration 6 every process of rank 1's host is SIGKILLed at once
  (its ``sshd`` too), at 12 every process of rank 0's host;
- ``silent_loss``: 3 hosts; at iteration 6 rank 1's link goes down, then its processes are
  killed: no reset packet reaches anyone, and the survivors learn it from Gloo's timeout;
- ``partition``: 3 hosts; at iteration 6 rank 2's link goes down while its processes live on;
  they must be gone within 60 s (their ``sshd`` drops the session after its keep-alives, and
  ``gluon_elastic.hostguard`` takes the workers with it; Gloo's timeout ends their collective
  anyway); the link comes back while the others hold at iteration 12, and they finish without
  the host, which nothing stale rejoins (the driver blacklisted it).
"""
import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
# pylint: disable=wrong-import-position
from host_jobs import run_host_job  # noqa: E402
from hosts import require_hosts  # noqa: E402
from horovod_elastic import listed  # noqa: E402
import horovod_records  # noqa: E402

pytestmark = pytest.mark.multihost

NUM_SAMPLES = 60   # tests/workers/horovod_elastic.py
EPOCHS = 3
JOB_TIMEOUT = 200
# Gloo's timeout where no failure goes unannounced; a silent loss is detected only through it.
GLOO_TIMEOUT = 60
SILENT_GLOO_TIMEOUT = 15
PARTITION_LIMIT = 60.0


def fixed(hosts):
    return "0:%s" % listed(*hosts)


@pytest.fixture(scope="module")
def resize_job(tmp_path_factory):
    require_hosts()
    return run_host_job(
        str(tmp_path_factory.mktemp("resize")), 3,
        lambda h: "0:%s;6:%s;12:%s" % (listed(h[0], h[1]), listed(*h), listed(h[0], h[2])),
        {}, 2, GLOO_TIMEOUT, timeout=JOB_TIMEOUT)


@pytest.fixture(scope="module")
def host_loss_job(tmp_path_factory):
    require_hosts()
    return run_host_job(str(tmp_path_factory.mktemp("host_loss")), 3, fixed,
                        {6: ("kill", 1), 12: ("kill", 0)}, 3, GLOO_TIMEOUT, timeout=JOB_TIMEOUT)


@pytest.fixture(scope="module")
def silent_loss_job(tmp_path_factory):
    require_hosts()
    return run_host_job(str(tmp_path_factory.mktemp("silent_loss")), 3, fixed,
                        {6: ("silent-kill", 1)}, 3, SILENT_GLOO_TIMEOUT, timeout=JOB_TIMEOUT)


@pytest.fixture(scope="module")
def partition_job(tmp_path_factory):
    require_hosts()
    return run_host_job(str(tmp_path_factory.mktemp("partition")), 3, fixed,
                        {6: ("partition", 2), 12: ("after-heal", None)}, 3, SILENT_GLOO_TIMEOUT,
                        timeout=JOB_TIMEOUT)


def assert_every_invariant(job):
    """The one-machine invariants, and nothing left on any host."""
    horovod_records.assert_every_invariant(job, EPOCHS, NUM_SAMPLES)
    assert job.leftovers == {}, job.leftovers
    assert job.remaining == [], job.remaining


def worlds(job):
    """``(world size, iteration, sorted hosts)`` of every (re)start."""
    return [(s["world_size"], s["iteration"], sorted(s["hosts"])) for s in job.events("start")]


def first_step_after(job, when):
    """Time of rank 0's first step record after ``when`` (a wall-clock time)."""
    return min(s["time"] for s in job.events("step") if s["time"] > when)


@pytest.mark.timeout(JOB_TIMEOUT + 60)
def test_grow_by_a_host(resize_job):
    assert_every_invariant(resize_job)
    h = resize_job.hosts
    assert worlds(resize_job)[:2] == [(2, 0, sorted(h[:2])), (3, 6, sorted(h))]


@pytest.mark.timeout(JOB_TIMEOUT + 60)
def test_shrink_by_a_host(resize_job):
    assert_every_invariant(resize_job)
    h = resize_job.hosts
    assert worlds(resize_job)[2:] == [(2, 12, sorted([h[0], h[2]]))]
    assert resize_job.output.count("is not part of the new world; leaving") == 1
    assert sorted(resize_job.events("end")[0]["hosts"]) == sorted([h[0], h[2]])


@pytest.mark.timeout(JOB_TIMEOUT + 60)
def test_host_loss(host_loss_job):
    assert_every_invariant(host_loss_job)
    lost = host_loss_job.actions[0]
    assert (lost["iteration"], lost["kind"], lost["world_size"]) == (6, "kill", 3)
    survivors = sorted(set(host_loss_job.hosts) - {lost["host"]})
    starts = worlds(host_loss_job)
    # Rolled back to the commit at 6 (taken before the hold), on the two other hosts.
    assert starts[:2] == [(3, 0, sorted(host_loss_job.hosts)), (2, 6, survivors)]
    # Detected through the connection resets of the dead host's kernel: long before Gloo's
    # timeout, which a survivor left in a receive would have waited.
    assert first_step_after(host_loss_job, lost["time"]) - lost["time"] < GLOO_TIMEOUT / 4


@pytest.mark.timeout(JOB_TIMEOUT + 60)
def test_rank0_host_loss(host_loss_job):
    assert_every_invariant(host_loss_job)
    lost = host_loss_job.actions[1]
    assert (lost["iteration"], lost["kind"], lost["rank"], lost["world_size"]) == \
        (12, "kill", 0, 2)
    starts = worlds(host_loss_job)
    assert lost["host"] == host_loss_job.events("start")[1]["hosts"][0]
    last = sorted(set(host_loss_job.hosts) - {host_loss_job.actions[0]["host"], lost["host"]})
    assert starts[2:] == [(1, 12, last)]
    assert first_step_after(host_loss_job, lost["time"]) - lost["time"] < GLOO_TIMEOUT / 4


@pytest.mark.timeout(JOB_TIMEOUT + 60)
def test_silent_host_loss(silent_loss_job):
    assert_every_invariant(silent_loss_job)
    lost = silent_loss_job.actions[0]
    assert (lost["iteration"], lost["kind"], lost["world_size"]) == (6, "silent-kill", 3)
    survivors = sorted(set(silent_loss_job.hosts) - {lost["host"]})
    assert worlds(silent_loss_job)[1:] == [(2, 6, survivors)]
    # No reset packet: the survivors wait for Gloo's timeout, then every one of them resets.
    detection = first_step_after(silent_loss_job, lost["time"]) - lost["time"]
    assert SILENT_GLOO_TIMEOUT <= detection < SILENT_GLOO_TIMEOUT + 20, detection


@pytest.mark.timeout(JOB_TIMEOUT + 60)
def test_partitioned_host_leaves_and_never_rejoins(partition_job):
    assert_every_invariant(partition_job)
    cut = partition_job.actions[0]
    assert (cut["iteration"], cut["kind"], cut["world_size"]) == (6, "partition", 3)
    # Its sshd drops the session after 3 unanswered keep-alives 2 s apart; the guard kills the
    # workers at once.
    assert cut["left"] - cut["time"] < PARTITION_LIMIT, cut
    survivors = sorted(set(partition_job.hosts) - {cut["host"]})
    assert worlds(partition_job)[1:] == [(2, 6, survivors)]
    # Nothing from the partitioned host after the cut, though its link came back before the end:
    # no step of its workers at or after the held iteration, no world that holds it.
    assert cut["healed"] < partition_job.events("end")[0]["time"]
    assert cut["pids"]
    for pid in cut["pids"]:
        path = os.path.join(partition_job.log_dir, "indices.%d.jsonl" % pid)
        if os.path.exists(path):
            with open(path) as fin:
                iterations = [json.loads(line)["iteration"] for line in fin]
            assert max(iterations) < cut["iteration"], (pid, iterations)
    for record in partition_job.events("start") + partition_job.events("end"):
        if record["time"] > cut["time"]:
            assert cut["host"] not in record["hosts"], record
