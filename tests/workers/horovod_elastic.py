"""Elastic Horovod worker for the distributed tests: a small model, schedules, JSON-line records.

Started by ``horovodrun --host-discovery-script`` from tests/dist/test_horovod_elastic.py.

- Discovery follows ``--schedule`` (see scripts/discovery.py) keyed by the trainer's iteration,
  which rank 0 writes to ``--progress-file`` before every step. With ``--wait-for-schedule``, a
  step whose scheduled world differs from the current one waits (polling
  ``state.check_host_updates()`` on every rank) until the driver announces the change, so each
  change lands at exactly the scheduled iteration.
- ``--exits 'ITER:RANK:ACTION[:WORLD];...'``: the worker holding RANK at iteration ITER acts once
  (a marker file remembers it): ``kill`` SIGKILLs itself, ``kill-soon`` SIGKILLs itself after a
  delay drawn from ``--kill-seed`` (0 to ``KILL_SOON_SECONDS``) while training goes on, so the
  kill lands at an arbitrary point (inside a step, a commit, a check), ``raise`` raises, ``stop``
  SIGSTOPs itself and is continued 10 s later by a helper process, ``kill-driver`` SIGKILLs the
  ``gluon_elastic.horovodrun`` driver that started it, ``hold`` makes every rank wait before the
  step until the file ``release.ITER`` exists in the log directory (RANK records the hold with
  the host of every rank; a test acts on hosts meanwhile, then releases; once released, a rerun
  of ITER after a reset does not hold again). With WORLD, all ranks first wait (polling
  ``state.check_host_updates()``) until the world has WORLD workers.
- ``--no-wait``: steps are not followed by a flush of MXNet's engine; the loop waits only where
  ``ElasticState`` does (the step's own writes, at every check), so the copies of a commit run
  beside the next step. ``--auto-commit STEPS``: the state's ``CommitPolicy`` (default overhead
  and time cap, at least every STEPS steps) adds commits of its own (otherwise every commit is the
  loop's, every ``--commit-interval`` steps and at the end of each epoch).
- ``--startup-sleep RANK:SECONDS``: a worker launched with rank RANK (a joiner of a growth) sleeps
  SECONDS in its start-up, before it creates its Horovod backend, and records ``startup.<pid>``
  (start and end of its start-up); ``--step-sleep SECONDS`` lengthens every step.
- Every rank appends to ``commits.<pid>.jsonl`` the digests of all its parameters and of its
  momentum at every commit, as a commit callback (the state then holds exactly what the commit
  snapshot queued).
- Rank 0 appends to ``rank0.jsonl``: ``start`` records after every (re)start of the training
  function (generation, world, iteration, progress, every rank's parameter and momentum digests
  and pid),
  ``step`` records (world, global batch, applied LR, progress), ``commit`` and ``end`` records;
  the rank that acts on ``--exits`` appends a record named after the action just before it.
  Every rank appends the sample indices it trained to ``indices.<pid>.jsonl``.
"""
import argparse
import faulthandler
import hashlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
import discovery  # noqa: E402  pylint: disable=wrong-import-position

from gluon_elastic import ElasticTrainer, Schedule, backends  # noqa: E402
from gluon_elastic.data import ElasticSampler  # noqa: E402
from gluon_elastic.run import run  # noqa: E402
from gluon_elastic.state import CommitPolicy, ElasticState  # noqa: E402

NUM_SAMPLES = 60
NUM_FEATURES = 6
LOCAL_BATCH_SIZE = 4
BASE_LR = 0.05
FINAL_LR = 0.005
MOMENTUM = 0.9


def parse_args(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--log-dir", required=True)
    parser.add_argument("--progress-file", required=True)
    parser.add_argument("--schedule", required=True)
    parser.add_argument("--wait-for-schedule", action="store_true")
    parser.add_argument("--exits", default="")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--commit-interval", type=int, default=3)
    parser.add_argument("--no-wait", action="store_true")
    parser.add_argument("--auto-commit", type=int, default=None, metavar="STEPS")
    parser.add_argument("--kill-seed", type=int, default=0)
    parser.add_argument("--startup-sleep", default=None, metavar="RANK:SECONDS")
    parser.add_argument("--step-sleep", type=float, default=0.0)
    return parser.parse_args(argv)


def schedule_for(epochs):
    """Base LR schedule of the worker (the test recomputes the LR from it)."""
    return Schedule("poly", base_lr=BASE_LR, total_samples=epochs * NUM_SAMPLES, power=1.0,
                    final_lr=FINAL_LR)


def data():
    rng = np.random.RandomState(7)
    features = rng.normal(size=(NUM_SAMPLES, NUM_FEATURES)).astype(np.float32)
    targets = (features @ rng.normal(size=(NUM_FEATURES, 1))).astype(np.float32)
    return features, targets


def build_net():
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(8, activation="tanh"), gluon.nn.BatchNorm(), gluon.nn.Dense(1))
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((2, NUM_FEATURES)))
    return net


def digest(arrays):
    sha = hashlib.sha1()
    for array in arrays:
        sha.update(array.asnumpy().tobytes())
    return sha.hexdigest()


EXIT_ACTIONS = ("kill", "kill-soon", "raise", "stop", "kill-driver", "hold")
STOP_SECONDS = 10
KILL_SOON_SECONDS = 0.5
# Longest a held rank waits for its release file.
HOLD_SECONDS = 300


def parse_exits(text):
    """``{iteration: (rank, action, world size or None)}``."""
    exits = {}
    for item in filter(None, text.split(";")):
        fields = item.split(":")
        if len(fields) not in (3, 4) or fields[2] not in EXIT_ACTIONS:
            raise ValueError("exits are ITER:RANK:ACTION[:WORLD] with ACTION in %s, got %r"
                             % (EXIT_ACTIONS, item))
        world = int(fields[3]) if len(fields) == 4 else None
        exits[int(fields[0])] = (int(fields[1]), fields[2], world)
    return exits


def listed(*hosts):
    """A discovery schedule's host list of one-slot hosts."""
    return ",".join("%s:1" % host for host in hosts)


def chaos_plan(hosts, seed):
    """``(schedule, exits)`` of the chaos job from ``seed``: 9 membership changes, 4 kills.

    On the first four of ``hosts``: flaps between 1 and 4 workers, one replacement (b -> c at
    iteration 18) and SIGKILLs of ranks drawn from ``seed`` in worlds of 4, rank 0 at 24.
    """
    rng = random.Random(seed)
    a, b, c, d = hosts[:4]
    every = (a, b, c, d)
    memberships = [(0, every), (6, (a,)), (9, every), (15, (a, b)), (18, (a, c)), (21, every),
                   (27, (a, b, c)), (30, every), (36, (rng.choice(every),)), (39, every)]
    # Kills wait for a world of 4; the one at 24 is rank 0's.
    kills = [(12, rng.randrange(4)), (24, 0), (33, rng.randrange(4)), (42, rng.randrange(4))]
    schedule = ";".join("%d:%s" % (iteration, listed(*members))
                        for iteration, members in memberships)
    exits = ";".join("%d:%d:kill:4" % kill for kill in kills)
    return schedule, exits


def kill_driver():
    """SIGKILL the gluon_elastic.horovodrun driver among this process's ancestors."""
    import psutil

    for parent in psutil.Process().parents():
        if "--driver" in parent.cmdline() and "gluon_elastic.horovodrun" in parent.cmdline():
            parent.kill()
            return
    raise RuntimeError("no gluon_elastic.horovodrun driver among the ancestors")


def stop_self(marker):
    """SIGSTOP this process; a helper (carrying the job's marker) sends SIGCONT later."""
    subprocess.Popen([sys.executable, "-c", "import os, signal, sys, time; time.sleep(%d); "
                      "os.kill(int(sys.argv[1]), signal.SIGCONT)" % STOP_SECONDS,
                      str(os.getpid()), marker])
    os.kill(os.getpid(), signal.SIGSTOP)


class Recorder:
    """Appends JSON lines; rank 0's file is shared by whoever holds rank 0."""

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self.indices_path = os.path.join(log_dir, "indices.%d.jsonl" % os.getpid())

    def rank0(self, record):
        record["time"] = time.time()
        with open(os.path.join(self.log_dir, "rank0.jsonl"), "a") as fout:
            fout.write(json.dumps(record) + "\n")

    def indices(self, record):
        with open(self.indices_path, "a") as fout:
            fout.write(json.dumps(record) + "\n")


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    # `kill -USR1 <pid>` dumps every thread's Python stack next to the records (hang diagnosis).
    stacks = open(os.path.join(args.log_dir, "stacks.%d.txt" % os.getpid()), "w")
    faulthandler.register(signal.SIGUSR1, file=stacks, all_threads=True)
    schedule = discovery.parse_schedule(args.schedule)
    exits = parse_exits(args.exits)
    recorder = Recorder(args.log_dir)
    features, targets = data()
    mx.random.seed(1)
    net = build_net()
    if args.startup_sleep:
        sleep_rank, seconds = args.startup_sleep.split(":")
        if os.environ.get("HOROVOD_RANK") == sleep_rank:
            slept_from = time.time()
            time.sleep(float(seconds))
            with open(os.path.join(args.log_dir, "startup.%d.json" % os.getpid()), "w") as fout:
                json.dump({"sleep_start": slept_from, "startup_done": time.time()}, fout)
    backend = backends.create("horovod")
    trainer = ElasticTrainer(net.collect_params(), "sgd",
                             {"learning_rate": BASE_LR, "momentum": MOMENTUM, "wd": 1e-4},
                             kvstore=backend, local_batch_size=LOCAL_BATCH_SIZE,
                             base_batch_size=2 * LOCAL_BATCH_SIZE,
                             schedule=schedule_for(args.epochs))
    sampler = ElasticSampler(NUM_SAMPLES, seed=3)
    state = ElasticState(net, trainer, sampler, epoch=0, waited_at=-1,
                         commit_policy=CommitPolicy(max_steps=args.auto_commit)
                         if args.auto_commit else CommitPolicy(None, None, None))
    loss_fn = gluon.loss.L2Loss()

    def record_commit(state):
        with open(os.path.join(args.log_dir, "commits.%d.jsonl" % os.getpid()), "a") as fout:
            fout.write(json.dumps({
                "generation": state.generation, "iteration": trainer.iteration,
                "rank": trainer.rank, "time": time.time(),
                "param_digest": digest([p.data() for p in state.params]),
                "momentum_digest": digest(trainer.momentum_arrays())}) + "\n")

    state.register_commit_callbacks([record_commit])
    # Whether this rank rolled back to its last commit since its last start record.
    restored = []
    restore_commit = state.restore

    def restore():
        restore_commit()
        restored.append(trainer.iteration)

    state.restore = restore

    def snapshot(event):
        # All parameters after a sync; only the trained ones at the end (BatchNorm running
        # statistics follow each rank's own batches between resets).
        params = [p for p in state.params if event == "start" or p.grad_req != "null"]
        gathered = backend.allgather_object(
            (digest([p.data() for p in params]), digest(trainer.momentum_arrays()),
             os.environ.get("HOROVOD_HOSTNAME"), os.getpid(), bool(restored)))
        restored.clear()
        if trainer.rank == 0:
            recorder.rank0({"event": event, "generation": state.generation,
                            "world_size": trainer.world_size, "iteration": trainer.iteration,
                            "progress": trainer.progress, "epoch": state.epoch,
                            "processed": sampler.processed,
                            "param_digests": [g[0] for g in gathered],
                            "momentum_digests": [g[1] for g in gathered],
                            "hosts": [g[2] for g in gathered],
                            "pids": [g[3] for g in gathered],
                            "restored": [g[4] for g in gathered]})

    def wait_for_world(iteration):
        # Only at a boundary of the schedule, and only while the world is not the scheduled one
        # (a replacement, same size on other hosts, always waits). A host blacklisted after a
        # failure keeps its slots out of the world, so the wait ends at the first change rather
        # than at the scheduled size.
        if iteration == 0 or state.waited_at == iteration:
            return
        wanted = discovery.world_size_at(schedule, iteration)
        previous = discovery.world_size_at(schedule, iteration - 1)
        replaced = wanted == previous and discovery.hosts_at(schedule, iteration) \
            != discovery.hosts_at(schedule, iteration - 1)
        if not replaced and (wanted == previous or wanted == trainer.world_size):
            return
        if replaced:
            hosts = backend.allgather_object(os.environ.get("HOROVOD_HOSTNAME"))
            listed = [h for h, slots in discovery.hosts_at(schedule, iteration)
                      for _ in range(slots)]
            if sorted(hosts) == sorted(listed):  # already there (a relaunch resumed here)
                return
        # A user value, so that the ranks of the next world (rank 0's after the sync) agree.
        state.waited_at = iteration
        world_size = trainer.world_size
        deadline = time.time() + 120
        while trainer.world_size == world_size:
            if time.time() > deadline:
                raise RuntimeError("world %d never became %d at iteration %d"
                                   % (trainer.world_size, wanted, iteration))
            time.sleep(0.1)
            state.check_host_updates()

    def act(iteration, rank, action, world):
        marker = os.path.join(args.log_dir, "exit.%d.%d" % (iteration, rank))
        release = os.path.join(args.log_dir, "release.%d" % iteration)
        if os.path.exists(release if action == "hold" else marker):
            return
        if world is not None:
            deadline = time.time() + 120
            while trainer.world_size != world:  # a reset re-runs the function from its commit
                if time.time() > deadline:
                    raise RuntimeError("world %d never became %d for the %s at iteration %d"
                                       % (trainer.world_size, world, action, iteration))
                time.sleep(0.1)
                state.check_host_updates()
        if action == "hold":
            # Every rank: the release file cannot exist yet, it follows RANK's record.
            hosts = backend.allgather_object(os.environ.get("HOROVOD_HOSTNAME"))
            if trainer.rank == rank:
                recorder.rank0({"event": "hold", "iteration": iteration, "rank": rank,
                                "world_size": trainer.world_size, "hosts": hosts})
            deadline = time.time() + HOLD_SECONDS
            while not os.path.exists(release):
                if time.time() > deadline:
                    raise RuntimeError("no release of the hold at iteration %d" % iteration)
                time.sleep(0.05)
            return
        if trainer.rank != rank:
            return
        open(marker, "w").close()
        # Written by the acting rank (appends of one short line do not interleave).
        recorder.rank0({"event": action, "iteration": iteration, "rank": rank,
                        "world_size": trainer.world_size})
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "kill-soon":
            delay = random.Random("%d:%d" % (args.kill_seed, iteration)).uniform(
                0, KILL_SOON_SECONDS)
            threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL)).start()
        elif action == "kill-driver":
            time.sleep(1.0)  # the last commit's background write lands first
            kill_driver()
        elif action == "stop":
            stop_self(args.progress_file)
        else:
            raise RuntimeError("scheduled failure of rank %d at iteration %d" % (rank, iteration))

    def log_commit():
        if trainer.rank == 0:
            recorder.rank0({"event": "commit", "generation": state.generation,
                            "iteration": trainer.iteration, "progress": trainer.progress,
                            "epoch": state.epoch})

    @run
    def train(state):
        snapshot("start")
        while state.epoch < args.epochs:
            sampler.set_epoch(state.epoch)
            local_sizes = trainer.batch_policy.local_batch_sizes(trainer.world_size)
            for indices, global_batch_size in sampler.iter_batches(local_sizes, trainer.rank):
                iteration = trainer.iteration
                if trainer.rank == 0:
                    discovery.write_progress(args.progress_file, iteration)
                if args.wait_for_schedule:
                    wait_for_world(iteration)
                if iteration in exits:
                    act(iteration, *exits[iteration])
                with autograd.record():
                    loss = loss_fn(net(mx.nd.array(features[indices])),
                                   mx.nd.array(targets[indices]))
                loss.backward()
                trainer.step(global_batch_size=global_batch_size)
                if args.step_sleep:
                    time.sleep(args.step_sleep)
                if not args.no_wait:
                    mx.nd.waitall()
                sampler.record(global_batch_size)
                recorder.indices({"generation": state.generation, "iteration": iteration,
                                  "epoch": state.epoch, "rank": trainer.rank,
                                  "indices": [int(i) for i in indices]})
                if trainer.rank == 0:
                    recorder.rank0({"event": "step", "generation": state.generation,
                                    "iteration": iteration, "world_size": trainer.world_size,
                                    "global_batch_size": global_batch_size,
                                    "lr": trainer.optimizer.learning_rate,
                                    "progress": trainer.progress, "epoch": state.epoch})
                if trainer.iteration % args.commit_interval == 0:
                    # Logged first: commit() saves locally before its collective can fail.
                    log_commit()
                    state.commit()
                else:
                    state.check_host_updates()
            state.epoch += 1
            log_commit()
            state.commit()
        snapshot("end")
        return trainer.progress

    progress = train(state)  # Horovod is shut down when it returns
    logging.info("done at progress %d", progress)


if __name__ == "__main__":
    main()
