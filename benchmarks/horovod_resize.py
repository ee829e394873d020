"""Resize latency of elastic Horovod with a ResNet-50 v1b state, and the cost of a commit.

    python benchmarks/horovod_resize.py --repeats 3          # prints a table, writes --out JSON

Each repeat runs one ``horovodrun`` elastic job on this machine: 2 workers, a third joins at
iteration 3 (schedule-driven discovery), one leaves at iteration 6. The model is GluonCV's
``resnet50_v1b`` (25.6 M parameters, BatchNorm statistics included; momentum SGD, so the state is
about 204 MB of float32) on 32x32 inputs, batch 2 per worker, so a step stays short on 2 cores.

Phases of a change, for the survivors (from the moment the discovery script starts answering the
new host list):

- detection: until ``check_host_updates`` raises (driver polling, notification, agreement);
- re-rendezvous: Horovod shutdown and re-initialisation on the new world;
- state broadcast: ``ElasticState.sync`` (parameters, momentum, counters);
- first step: the first optimizer step at the new size.

For the joining worker: process start to MXNet/Horovod imported, Horovod initialisation (the
rendezvous with the survivors), the state broadcast, and its first step. The floor beside them is
a Gloo initialisation (the initial ``hvd.init`` of a worker) plus the broadcast of the state's bytes
at the loopback bandwidth measured here with one TCP stream.

The commit cost is ``ElasticState.commit`` time as a share of the time of the steps between two
commits at the default ``--commit-interval`` (20).

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
SCHEDULE = "0:2;3:3;6:2"
DEFAULT_COMMIT_INTERVAL = 20


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
    init_start = time.time()
    backend = backends.create("horovod")
    init_done = time.time()
    schedule = discovery.parse_schedule(SCHEDULE)
    mx.random.seed(0)
    net = get_model("resnet50_v1b", pretrained=False, pretrained_base=False)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, 32, 32)))
    trainer = ElasticTrainer(net.collect_params(), "sgd", {"learning_rate": 0.01, "momentum": 0.9},
                             kvstore=backend, local_batch_size=2)
    state = ElasticState(net, trainer, None, waited_at=-1)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    data = mx.nd.random.uniform(shape=(2, 3, 32, 32))
    label = mx.nd.array([1, 2])
    built = time.time()
    num_params = sum(p.data().size for p in state.params)
    marks = {"pid": os.getpid(), "start": START_TIME, "import_start": import_start,
             "imported": imported, "init_start": init_start, "init_done": init_done,
             "built": built, "num_params": num_params}
    record_path = os.path.join(args.log_dir, "worker.%d.jsonl" % os.getpid())

    def record(event, **values):
        values.update(event=event, time=time.time(), rank=trainer.rank,
                      world_size=trainer.world_size, iteration=trainer.iteration)
        with open(record_path, "a") as fout:
            fout.write(json.dumps(values) + "\n")

    record("process", **marks)
    state.register_reset_callbacks([lambda: record("reset_done")])

    def one_step():
        with autograd.record():
            loss = loss_fn(net(data), label)
        loss.backward()
        trainer.step()
        mx.nd.waitall()

    @run
    def train(state):
        record("synced")
        while trainer.iteration < args.steps:
            iteration = trainer.iteration
            wanted = discovery.world_size_at(schedule, iteration)
            if iteration > 0 and wanted != discovery.world_size_at(schedule, iteration - 1) \
                    and state.waited_at != iteration and wanted != trainer.world_size:
                state.waited_at = iteration
                if trainer.rank == 0:
                    discovery.write_progress(args.progress_file, iteration)
                    record("change_announced")
                try:
                    while True:
                        time.sleep(0.02)
                        state.check_host_updates()
                except HostsUpdatedInterrupt:
                    record("interrupted")
                    raise
            tic = time.time()
            one_step()
            record("step", seconds=time.time() - tic)
            if iteration >= 7 and trainer.iteration % 4 == 0:
                tic = time.time()
                state.commit()
                record("commit", seconds=time.time() - tic)
            else:
                state.check_host_updates()
        return trainer.iteration

    train(state)


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
    if cluster is None:
        command = [os.path.join(os.path.dirname(sys.executable), "horovodrun"), "--gloo",
                   "-np", "2", "--min-np", "1", "--max-np", "3", "--host-discovery-script",
                   script, "--network-interface", "lo"] + worker
    else:
        command = [sys.executable, "-m", "gluon_elastic.horovodrun", "-np", "2", "--min-np", "1",
                   "--max-np", "3", "--host-discovery-script", script, "--network-interface",
                   cluster.interface, "--checkpoint-dir", os.path.join(log_dir, "checkpoints"),
                   "--"] + worker
    env = dict(os.environ, OMP_NUM_THREADS="1", HOROVOD_GLOO_TIMEOUT_SECONDS="120",
               MXNET_MKLDNN_ENABLED="0", MXNET_STORAGE_FALLBACK_LOG_VERBOSE="0")
    if cluster is not None:
        env = cluster.env(dict(env, PYTHONPATH=ROOT))
    with open(os.path.join(log_dir, "output.txt"), "w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if proc.returncode != 0:  # the log directory is temporary: show the end of the output
        with open(os.path.join(log_dir, "output.txt"), errors="replace") as fin:
            tail = fin.read()[-4000:]
        raise RuntimeError("benchmark job failed (exit %s):\n%s" % (proc.returncode, tail))
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
    result = {"grow": {}, "shrink": {}, "join": {}, "floor_init": [], "commit": [], "step": []}
    for pid_records in by_pid.values():
        pid_records.sort(key=lambda r: r["time"])
        process = next(r for r in pid_records if r["event"] == "process")
        result["floor_init"].append(process["init_done"] - process["init_start"])
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
            for name, value in (("detection", rec["time"] - change),
                                ("re-rendezvous", reset["time"] - rec["time"]),
                                ("state broadcast", synced["time"] - reset["time"]),
                                ("first step", step["time"] - synced["time"]),
                                ("total", step["time"] - change)):
                result[kind].setdefault(name, []).append(value)
        if process["rank"] == 2 or (announced and process["start"] > announced[0]):
            synced = next(r for r in pid_records if r["event"] == "synced")
            step = next(r for r in pid_records if r["event"] == "step")
            for name, value in (("process start to imports", process["imported"] - process["start"]),
                                ("hvd.init (rendezvous)", process["init_done"] - process["init_start"]),
                                ("model build (and first copy)", process["built"] - process["init_done"]),
                                ("state broadcast", synced["time"] - process["built"]),
                                ("first step", step["time"] - synced["time"]),
                                ("total from change", step["time"] - announced[0])):
                result["join"].setdefault(name, []).append(value)
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
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=600, help="seconds per job")
    parser.add_argument("--out", default=None, help="JSON file for the raw figures")
    parser.add_argument("--namespace-hosts", action="store_true",
                        help="run every worker on a network-namespace host over ssh (root)")
    parser.add_argument("--link-rate", default=None, help="shaped link rate, e.g. 10gbit")
    parser.add_argument("--link-delay", default=None, help="shaped link delay, e.g. 0.1ms")
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
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
