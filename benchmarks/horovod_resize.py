"""Resize latency of elastic Horovod with a ResNet-50 v1b state, and the cost of a commit.

    python benchmarks/horovod_resize.py --repeats 3          # prints a table, writes --out JSON

Each repeat runs one elastic job under the project's launcher (``python -m
gluon_elastic.horovodrun``, discovery every 0.2 s, rank 0 writing durable commits) on this
machine: 2 workers, a third joins at iteration 3 (schedule-driven discovery), one leaves at
iteration 30; 40 steps. The model is GluonCV's
``resnet50_v1b`` (25.6 M parameters, BatchNorm statistics included; momentum SGD, so the state is
about 204 MB of float32) on 32x32 inputs, batch 2 per worker, so a step stays short on 2 cores.

Phases of a change, for the survivors (from the moment the discovery script starts answering the
new host list):

- detection: until ``check_host_updates`` raises (driver polling, notification, agreement); for
  a growth this includes the joiner's start-up, during which the survivors keep training (the
  driver starts the joiner first and tells them when it is ready); the longest gap between two of
  their steps in that time is reported beside it. A shrink is waited for at its iteration;
- re-rendezvous: Horovod shutdown and re-initialisation on the new world;
- state broadcast: ``ElasticState.sync`` (the full state when a rank needs it, a joiner; after a
  shrink only the BatchNorm statistics and the counters);
- pause: re-rendezvous and sync, the time the survivors' progress stands still beyond a step;
- first step: the first optimizer step at the new size.

For the joining worker: process start to MXNet/Horovod imported, model build (its start-up ends
there), being let in and Horovod's initialisation (the survivors' re-rendezvous), the state
broadcast, its first step, and the time from the end of its start-up to its first step. The floor beside them is
a Gloo initialisation (the initial ``hvd.init`` of a worker) plus the broadcast of the state's bytes
at the loopback bandwidth measured here with one TCP stream.

Commit cost (``--commit-cost``): a fixed world of 2 workers under the project's launcher (rank 0
writes durable checkpoints), for ``resnet50_v1b`` and for a short step, ``resnet18_v1b`` (both on
32x32 inputs, batch 2 per worker). Steps are not followed by an engine flush (the state waits for
each step's own writes at its check). Measured:

- paired blocks of ``BLOCK_STEPS`` steps, without a commit and with one commit at the first step,
  alternating (durable writes left out); the cost of a commit is the median of the paired
  differences of block time; beside it the foreground time of ``commit()`` once the step's own
  writes are done (queueing the copies, the callbacks) and the engine time of the copies
  (measured alone at construction);
- a durable write of a commit (serialisation, checksum, write, fsync) by rank 0: wall and CPU time;
- the policy: ``COMMIT_POLICY_STEPS`` steps with the default ``CommitPolicy`` deciding alone
  (commits, and which of them rank 0 writes durably);
- beside them, the commit as it was before (a synchronous ``state_dict()`` and its pickling).

The share of training time is what the policy's commits and durable writes cost (their measured
costs, the write's CPU time) over the time of its steps.

Across hosts (``--namespace-hosts``, as root): the job runs under the project's launcher
(``python -m gluon_elastic.horovodrun``) with every worker on a network-namespace host of
tests/hosts.py, launched over real ``ssh``; ``--link-rate`` / ``--link-delay`` shape each host's
link with ``tc`` (a kernel without netem gets the rate alone, and the report says so). The floor
then takes the bandwidth of one TCP stream between two hosts through that link, printed beside
the link's round trip.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

START_TIME = time.time()  # before the imports: a joining worker's clock starts here

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
SCHEDULE = "0:2;3:3;30:2"
DEFAULT_COMMIT_INTERVAL = 20
BLOCK_STEPS = 8
COMMIT_PAIRS = 6
COMMIT_POLICY_STEPS = 120
COMMIT_MODELS = ("resnet50_v1b", "resnet18_v1b")


def worker(args):
    import_start = time.time()
    import mxnet as mx
    from mxnet import autograd, gluon
    import horovod.mxnet  # noqa: F401  (its import time belongs to the measured start-up)
    from gluoncv.model_zoo import get_model
    from horovod.common.exceptions import HostsUpdatedInterrupt

    import discovery
    from gluon_elastic import ElasticTrainer, backends
    from gluon_elastic.run import run
    from gluon_elastic.state import ElasticState

    imported = time.time()
    schedule = discovery.parse_schedule(SCHEDULE)
    mx.random.seed(0)
    net = get_model("resnet50_v1b", pretrained=False, pretrained_base=False)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 32, 32)))
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    data = mx.nd.random.uniform(shape=(2, 3, 32, 32))
    label = mx.nd.array([1, 2])
    built = time.time()
    backend = backends.create("horovod")
    trainer = ElasticTrainer(net.collect_params(), "sgd", {"learning_rate": 0.01, "momentum": 0.9},
                             kvstore=backend, local_batch_size=2)
    state = ElasticState(net, trainer, None, waited_at=-1)
    num_params = sum(p.data().size for p in state.params)
    # The start-up ends here: the worker joins in run() (a joiner started ahead reports its
    # start-up done and waits to be let in).
    ready = time.time()
    marks = {"pid": os.getpid(), "start": START_TIME, "import_start": import_start,
             "imported": imported, "built": built, "ready": ready, "num_params": num_params}
    record_path = os.path.join(args.log_dir, "worker.%d.jsonl" % os.getpid())

    def record(event, **values):
        values.update(event=event, time=time.time(), rank=trainer.rank,
                      world_size=trainer.world_size, iteration=trainer.iteration)
        with open(record_path, "a") as fout:
            fout.write(json.dumps(values) + "\n")

    first_record = []
    state.register_reset_callbacks([lambda: record("reset_done")])

    def one_step():
        with autograd.record():
            loss = loss_fn(net(data), label)
        loss.backward()
        trainer.step()
        mx.nd.waitall()

    def check(commit=False):
        try:
            if commit:
                state.commit()
            else:
                state.check_host_updates()
        except HostsUpdatedInterrupt:
            record("interrupted")
            raise

    @run
    def train(state):
        receivers = state.last_sync_receivers or []
        transfer = state.last_transfer if receivers and (
            trainer.rank == 0 or trainer.rank in receivers) else None
        if not first_record:   # joined now: rank and world are the world's
            first_record.append(True)
            start, let_in, joined = backend.join_times
            record("process", init_start=start, let_in=let_in, init_done=joined, **marks)
        record("synced", transfer_bytes=transfer and transfer[0],
               transfer_seconds=transfer and transfer[1])
        while trainer.iteration < args.steps:
            iteration = trainer.iteration
            wanted = discovery.world_size_at(schedule, iteration)
            if iteration > 0 and wanted != discovery.world_size_at(schedule, iteration - 1) \
                    and state.waited_at != iteration and wanted != trainer.world_size:
                state.waited_at = iteration
                if trainer.rank == 0:
                    discovery.write_progress(args.progress_file, iteration)
                    record("change_announced")
                # A growth is announced once the joiner has started: the survivors train on.
                # A shrink is waited for here, so that its detection is measured alone.
                while wanted < trainer.world_size:
                    time.sleep(0.02)
                    check()
            tic = time.time()
            one_step()
            record("step", seconds=time.time() - tic)
            if iteration >= 7 and trainer.iteration % 4 == 0:
                tic = time.time()
                check(commit=True)
                record("commit", seconds=time.time() - tic)
            else:
                check()
        return trainer.iteration

    train(state)


def commit_worker(args):
    """Commit cost of one model in a fixed world (see the module docstring); rank 0 records."""
    import pickle

    import mxnet as mx
    from mxnet import autograd, gluon
    from gluoncv.model_zoo import get_model

    from gluon_elastic import ElasticTrainer, backends
    from gluon_elastic.run import run
    from gluon_elastic.state import CommitPolicy, ElasticState

    backend = backends.create("horovod")
    mx.random.seed(0)
    net = get_model(args.commit_cost, pretrained=False, pretrained_base=False)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 32, 32)))
    trainer = ElasticTrainer(net.collect_params(), "sgd", {"learning_rate": 0.01, "momentum": 0.9},
                             kvstore=backend, local_batch_size=2)
    off = CommitPolicy(None, None, None)
    state = ElasticState(net, trainer, None, commit_policy=off)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    data = mx.nd.random.uniform(shape=(2, 3, 32, 32))
    label = mx.nd.array([1, 2])
    records = {"model": args.commit_cost, "copy_seconds": state.copy_seconds,
               "snapshot_bytes": state._snapshot.num_bytes,  # pylint: disable=protected-access
               "plain": [], "with_commit": [], "foreground": [], "durable_wall": [],
               "durable_cpu": [], "policy_commits": [], "before": []}

    def one_step():
        with autograd.record():
            loss = loss_fn(net(data), label)
        loss.backward()
        trainer.step()

    @run
    def train(state):
        # The launcher's durable writer is a commit callback of rank 0 (gluon_elastic.run); the
        # paired blocks measure the commit alone, its writes are measured on their own.
        callbacks = state._commit_callbacks  # pylint: disable=protected-access
        durable = next((c for c in callbacks if hasattr(c, "manager")), None)
        if durable is not None:
            callbacks.remove(durable)
        for _ in range(3):
            one_step()
            state.check_host_updates()
        mx.nd.waitall()
        for pair in range(2 * COMMIT_PAIRS):
            with_commit = pair % 2 == 1
            tic = time.perf_counter()
            for index in range(BLOCK_STEPS):
                one_step()
                if with_commit and index == 0:
                    state.commit()
                    records["foreground"].append(state.last_commit_seconds)
                else:
                    state.check_host_updates()
            mx.nd.waitall()
            records["with_commit" if with_commit else "plain"].append(time.perf_counter() - tic)
        if durable is not None:
            for _ in range(3 if trainer.rank == 0 else 0):  # rank 0 is the one writer
                durable.manager.save(state.committed_state, step=trainer.iteration)
                records["durable_wall"].append(durable.manager.last_write_seconds)
                records["durable_cpu"].append(durable.manager.last_write_cpu_seconds)
            callbacks.append(durable)
            durable.last = (time.monotonic(), trainer.iteration)
            writes_before = durable.written
        state.commit_policy = CommitPolicy()
        count, tic = state.commit_count, time.perf_counter()
        for _ in range(COMMIT_POLICY_STEPS):
            one_step()
            before = state.commit_count
            state.check_host_updates()
            if state.commit_count > before:
                records["policy_commits"].append(trainer.iteration)
        mx.nd.waitall()
        records["policy_seconds"] = time.perf_counter() - tic
        records["policy_steps"] = COMMIT_POLICY_STEPS
        records["commit_cost_estimate"] = state.commit_cost
        assert state.commit_count - count == len(records["policy_commits"])
        state.commit_policy = off
        if durable is not None:
            durable.wait()
            records["policy_durable_writes"] = durable.written - writes_before
        if trainer.rank == 0:
            for _ in range(3):  # the commit as it was: plain values, then pickled by the writer
                tic = time.perf_counter()
                pickle.dumps(state.state_dict(), protocol=5)
                records["before"].append(time.perf_counter() - tic)
            with open(os.path.join(args.log_dir, "commit_cost.json"), "w") as fout:
                json.dump(records, fout)

    train(state)


JOB_ENV = {"OMP_NUM_THREADS": "1", "HOROVOD_GLOO_TIMEOUT_SECONDS": "120",
           "MXNET_MKLDNN_ENABLED": "0", "MXNET_STORAGE_FALLBACK_LOG_VERBOSE": "0",
           "PYTHONPATH": ROOT}


def run_launcher(command, log_dir, timeout, what, env=None):
    """Run a launcher ``command`` with its output in ``log_dir``/output.txt; its whole process
    group is killed after ``timeout`` s, and a failure raises with the end of the output (the log
    directory is temporary)."""
    env = dict(os.environ, **JOB_ENV) if env is None else env
    with open(os.path.join(log_dir, "output.txt"), "w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
    if proc.returncode != 0:
        with open(os.path.join(log_dir, "output.txt"), errors="replace") as fin:
            tail = fin.read()[-4000:]
        raise RuntimeError("%s failed (exit %s):\n%s" % (what, proc.returncode, tail))


def run_commit_job(log_dir, model, timeout):
    """A fixed world of 2 under the project's launcher measuring ``model``'s commit cost."""
    command = [sys.executable, "-m", "gluon_elastic.horovodrun", "-np", "2", "-H", "localhost:2",
               "--network-interface", "lo", "--checkpoint-dir",
               os.path.join(log_dir, "checkpoints"), "--",
               sys.executable, os.path.abspath(__file__), "--worker", "--log-dir", log_dir,
               "--commit-cost", model]
    run_launcher(command, log_dir, timeout, "commit-cost job")
    with open(os.path.join(log_dir, "commit_cost.json")) as fin:
        return json.load(fin)


def commit_figures(records):
    """Cost of a commit and of a durable write, the policy's choices, the share of training time."""
    step = median([t / BLOCK_STEPS for t in records["plain"]])
    cost = median([b - a for a, b in zip(records["plain"], records["with_commit"])])
    commits = records["policy_commits"]
    writes = records.get("policy_durable_writes", 0)
    durable_cpu = median(records["durable_cpu"]) if records["durable_cpu"] else 0.0
    foreground = median(records["foreground"])
    # The policy in a long run, from the measured parts (CommitPolicy's defaults): a commit
    # (foreground + copies) every time it fits in half of 1 %, capped at 100 steps and 60 s; a
    # durable write when its CPU time fits in the other half, at most once per commit.
    commit_cost = foreground + records["copy_seconds"]
    commit_every = min(60.0, 100 * step, max(2 * commit_cost / 0.01, step))
    durable_every = max(2 * durable_cpu / 0.01, commit_every)
    share = commit_cost / commit_every + durable_cpu / durable_every
    return {"model": records["model"], "snapshot_mb": records["snapshot_bytes"] / 1e6,
            "step": step, "commit_paired": cost, "foreground": foreground,
            "foreground_max": max(records["foreground"]), "copy": records["copy_seconds"],
            "durable_wall": median(records["durable_wall"]) if records["durable_wall"] else 0.0,
            "durable_cpu": durable_cpu, "policy_seconds": records["policy_seconds"],
            "policy_steps": records["policy_steps"], "policy_commits": len(commits),
            "policy_durable_writes": writes,
            "policy_step": records["policy_seconds"] / records["policy_steps"],
            "commit_every": commit_every, "durable_every": durable_every, "share": share,
            "before": median(records["before"]),
            "before_share_at_20": median(records["before"]) / (DEFAULT_COMMIT_INTERVAL * step)}


def measure_commit_cost(args):
    """Run the commit-cost job ``args.repeats`` times per model; print and write the figures."""
    results = {}
    models = COMMIT_MODELS if args.commit_cost == "all" else (args.commit_cost,)
    for model in models:
        for repeat in range(args.repeats):
            load = os.getloadavg()[0]
            with tempfile.TemporaryDirectory(prefix="hvd_commit_") as log_dir:
                figures = commit_figures(run_commit_job(log_dir, model, args.timeout))
            figures["load"] = (load, os.getloadavg()[0])
            results.setdefault(model, []).append(figures)
            print("%s repeat %d: %s" % (model, repeat + 1, json.dumps(figures)), flush=True)
    for model, runs in results.items():
        def med(key):
            return median([r[key] for r in runs])
        print("%s (%.0f MB snapshot, median of %d, load %.1f-%.1f): step %.3f s; commit %.4f s "
              "(foreground %.4f s, max %.4f s; copies %.4f s); durable write %.3f s (CPU %.3f s); "
              "policy: %.0f commits and %.0f durable writes in %.0f steps (%.0f s, step %.3f s); "
              "in a long run a commit every %.0f s and a durable write every %.0f s -> %.2f %% of "
              "training time; before: %.3f s per commit = %.1f %% at 20 steps"
              % (model, runs[0]["snapshot_mb"], len(runs),
                 min(min(r["load"]) for r in runs), max(max(r["load"]) for r in runs),
                 med("step"), med("commit_paired"), med("foreground"),
                 max(r["foreground_max"] for r in runs), med("copy"), med("durable_wall"),
                 med("durable_cpu"), med("policy_commits"), med("policy_durable_writes"),
                 med("policy_steps"), med("policy_seconds"), med("policy_step"),
                 med("commit_every"), med("durable_every"), 100 * med("share"), med("before"),
                 100 * med("before_share_at_20")))
    if args.out:
        with open(args.out, "w") as fout:
            json.dump(results, fout, indent=1)
    return results


def loopback_bandwidth(num_bytes=256 << 20, chunk=4 << 20):
    """Bytes per second of one TCP stream over loopback."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def sink():
        conn, _ = server.accept()
        received = 0
        while received < num_bytes:
            block = conn.recv(chunk)
            if not block:
                break
            received += len(block)
        conn.sendall(b"k")
        conn.close()

    thread = threading.Thread(target=sink)
    thread.start()
    payload = b"\0" * chunk
    client = socket.create_connection(("127.0.0.1", port))
    tic = time.time()
    for _ in range(num_bytes // chunk):
        client.sendall(payload)
    client.recv(1)
    seconds = time.time() - tic
    client.close()
    thread.join()
    server.close()
    return num_bytes / seconds


def run_job(log_dir, steps, timeout, cluster=None):
    """One job; with ``cluster`` (tests/hosts.Hosts, 3 hosts) across its hosts over ssh."""
    import discovery

    progress_file = os.path.join(log_dir, "progress")
    schedule = SCHEDULE
    worker = [sys.executable, os.path.abspath(__file__), "--worker", "--log-dir", log_dir,
              "--progress-file", progress_file, "--steps", str(steps)]
    if cluster is not None:
        # The same world sizes on named hosts: 2 hosts, the third joins, the second leaves.
        h1, h2, h3 = cluster.hosts[:3]
        schedule = "0:%s:1,%s:1;3:%s:1,%s:1,%s:1;6:%s:1,%s:1" % (h1, h2, h1, h2, h3, h1, h3)
    script = discovery.write_script(os.path.join(log_dir, "discover.sh"), schedule, progress_file)
    command = [sys.executable, "-m", "gluon_elastic.horovodrun", "-np", "2", "--min-np", "1",
               "--max-np", "3", "--host-discovery-script", script, "--network-interface",
               "lo" if cluster is None else cluster.interface,
               "--checkpoint-dir", os.path.join(log_dir, "checkpoints"), "--"] + worker
    env = None if cluster is None else cluster.env(dict(os.environ, **JOB_ENV))
    run_launcher(command, log_dir, timeout, "benchmark job", env=env)
    records = []
    for name in os.listdir(log_dir):
        if name.startswith("worker."):
            pid = int(name.split(".")[1])
            with open(os.path.join(log_dir, name)) as fin:
                records.extend(dict(json.loads(line), pid=pid) for line in fin)
    return records


def phases(records):
    """Per-change phase durations from the workers' records."""
    by_pid = {}
    for rec in records:
        by_pid.setdefault(rec["pid"], []).append(rec)
    announced = sorted(r["time"] for r in records if r["event"] == "change_announced")
    result = {"grow": {}, "shrink": {}, "join": {}, "floor_init": [], "commit": [], "step": [],
              "transfer": []}
    for pid_records in by_pid.values():
        pid_records.sort(key=lambda r: r["time"])
        process = next(r for r in pid_records if r["event"] == "process")
        result["floor_init"].append(process["init_done"] - process["let_in"])
        for index, rec in enumerate(pid_records):
            if rec["event"] != "interrupted":
                continue
            change = max(t for t in announced if t <= rec["time"])
            kind = "grow" if announced.index(change) == 0 else "shrink"
            rest = pid_records[index + 1:]
            reset = next((r for r in rest if r["event"] == "reset_done"), None)
            synced = next((r for r in rest if r["event"] == "synced"), None)
            step = next((r for r in rest if r["event"] == "step"), None)
            if not (reset and synced and step):
                continue  # this worker left the job
            before = [r["time"] for r in pid_records[:index] if r["event"] == "step"
                      and r["time"] >= change]
            gaps = [b - a for a, b in zip([change] + before, before + [rec["time"]])]
            for name, value in (("detection", rec["time"] - change),
                                ("longest step gap until told", max(gaps)),
                                ("re-rendezvous", reset["time"] - rec["time"]),
                                ("state broadcast", synced["time"] - reset["time"]),
                                ("pause (re-rendezvous + sync)", synced["time"] - rec["time"]),
                                ("first step", step["time"] - synced["time"]),
                                ("total", step["time"] - change)):
                result[kind].setdefault(name, []).append(value)
        if process["rank"] == 2 or (announced and process["start"] > announced[0]):
            synced = next(r for r in pid_records if r["event"] == "synced")
            step = next(r for r in pid_records if r["event"] == "step")
            for name, value in (("process start to imports", process["imported"] - process["start"]),
                                ("model build", process["built"] - process["imported"]),
                                ("trainer + ElasticState", process["ready"] - process["built"]),
                                ("let in + hvd.init", process["init_done"] - process["init_start"]),
                                ("state broadcast", synced["time"] - process["init_done"]),
                                ("first step", step["time"] - synced["time"]),
                                ("start-up end to first step start", synced["time"] - process["ready"]),
                                ("start-up end to first step end", step["time"] - process["ready"]),
                                ("total from change", step["time"] - announced[0])):
                result["join"].setdefault(name, []).append(value)
        # The full-state transfers of a growth (sender and receiver sides; rank 0's first sync
        # of the launch has no receiver to stream to and is not one of them).
        result["transfer"].extend([r["transfer_seconds"], r["transfer_bytes"]] for r in pid_records
                                  if r["event"] == "synced" and r.get("transfer_seconds")
                                  and announced and r["time"] > announced[0])
        result["commit"].extend(r["seconds"] for r in pid_records if r["event"] == "commit")
        result["step"].extend(r["seconds"] for r in pid_records
                              if r["event"] == "step" and r["iteration"] > 8)
    return result


def median(values):
    return statistics.median(values) if values else float("nan")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--log-dir")
    parser.add_argument("--progress-file")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per job")
    parser.add_argument("--out", default=None, help="JSON file for the raw figures")
    parser.add_argument("--namespace-hosts", action="store_true",
                        help="run every worker on a network-namespace host over ssh (root)")
    parser.add_argument("--link-rate", default=None, help="shaped link rate, e.g. 10gbit")
    parser.add_argument("--link-delay", default=None, help="shaped link delay, e.g. 0.1ms")
    parser.add_argument("--commit-cost", nargs="?", const="all", default=None,
                        help="measure the commit cost (of %s) instead of resizes"
                             % " and ".join(COMMIT_MODELS))
    args = parser.parse_args(argv)
    if args.worker:
        if args.commit_cost:
            commit_worker(args)
        else:
            worker(args)
        return
    if args.commit_cost:
        return measure_commit_cost(args)
    if not args.namespace_hosts:
        return measure(args, median([loopback_bandwidth() for _ in range(3)]))
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from hosts import Hosts, unavailable_reason

    reason = unavailable_reason()
    if reason:
        raise SystemExit("namespace hosts: %s" % reason)
    cluster = Hosts(3).start()
    try:
        shaping = cluster.shape(args.link_rate, args.link_delay) \
            if args.link_rate or args.link_delay else dict(cluster.shaping)
        a, b = cluster.hosts[:2]
        bandwidth = median([cluster.bandwidth(a, b) for _ in range(3)])
        link = dict(shaping, asked_delay=args.link_delay, round_trip=cluster.round_trip(a, b))
        print("link: %s rate, %s delay (tc %s%s); one TCP stream between two hosts %.2f GB/s, "
              "round trip %.0f us" % (
                  link["rate"] or "no", link["delay"] or "no", link["qdisc"],
                  "; this kernel has no netem, delay not applied"
                  if args.link_delay and not link["delay"] else "",
                  bandwidth / 1e9, link["round_trip"] * 1e6))
        return measure(args, bandwidth, cluster, link)
    finally:
        cluster.close()


def measure(args, bandwidth, cluster=None, link=None):
    """Run the repeats, print the phases beside the floor, write ``args.out``."""
    merged = {}
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="hvd_resize_") as log_dir:
            records = run_job(log_dir, args.steps, args.timeout, cluster)
            if args.out:
                with open("%s.records.%d.json" % (args.out, repeat), "w") as fout:
                    json.dump(records, fout)
            num_params = next(r["num_params"] for r in records if r["event"] == "process")
            for key, value in phases(records).items():
                if isinstance(value, dict):
                    for name, values in value.items():
                        merged.setdefault(key, {}).setdefault(name, []).extend(values)
                else:
                    merged.setdefault(key, []).extend(value)
        print("repeat %d done" % (repeat + 1), flush=True)
    state_bytes = 2 * num_params * 4  # float32 parameters and momentum (aux have no momentum)
    floor_init = median(merged["floor_init"])
    floor = floor_init + state_bytes / bandwidth
    step = median(merged["step"])
    commit = median(merged["commit"])
    print("state: %.1f M parameters (aux included), %.0f MB with momentum; %s %.2f GB/s"
          % (num_params / 1e6, state_bytes / 1e6,
             "loopback" if cluster is None else "host to host", bandwidth / 1e9))
    print("floor: Gloo init %.2f s + broadcast %.2f s = %.2f s" % (
        floor_init, state_bytes / bandwidth, floor))
    if merged.get("transfer"):
        seconds = median([t[0] for t in merged["transfer"]])
        transfer_floor = median([t[1] for t in merged["transfer"]]) / bandwidth
        print("state transfer to the joiner (median of %d sides): %.3f s, %.1f x the link's %.3f s"
              % (len(merged["transfer"]), seconds, seconds / transfer_floor, transfer_floor))
    for kind, title in (("grow", "survivors, 2 -> 3"), ("shrink", "survivors, 3 -> 2"),
                        ("join", "joining worker, 2 -> 3")):
        print("%s (median of %d):" % (title, len(merged.get(kind, {}).get("first step", []))))
        for name, values in merged.get(kind, {}).items():
            print("  %-32s %7.2f s" % (name, median(values)))
    print("step %.3f s; commit %.3f s = %.1f%% of the %d steps between commits"
          % (step, commit, 100.0 * commit / (DEFAULT_COMMIT_INTERVAL * step),
             DEFAULT_COMMIT_INTERVAL))
    if args.out:
        with open(args.out, "w") as fout:
            json.dump({"bandwidth": bandwidth, "num_params": num_params, "floor": floor,
                       "phases": merged, "link": link,
                       "load": os.getloadavg()[0]}, fout, indent=1)


if __name__ == "__main__":
    main()
