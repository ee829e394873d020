"""Crash rate of broadcasts on a loaded machine: Horovod's own op against HorovodBackend's.

    python benchmarks/horovod_broadcast_race.py --repeats 5     # prints a table, writes --out

Each repeat runs ``horovodrun --gloo -np 1`` on tests/workers/horovod_broadcast.py in stress mode
(100 small arrays broadcast per round, for ``--seconds``) while ``--busy`` Python busy loops hold
the cores. Horovod 0.28.1's ``broadcast_`` logs the tensor's name after queueing the op, and the
MXNet engine frees that name once the op completes: a worker whose engine thread is descheduled
in between reads freed memory (see gluon_elastic/backends/horovod.py). HorovodBackend broadcasts
with all-reduce sums instead. A repeat counts as a crash when the worker exits non-zero, or does
not finish within ``--seconds`` + 120 s (``timeout``); every process of a repeat is killed after it.
"""
import argparse
import json
import os
import subprocess
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "workers", "horovod_broadcast.py")
sys.path.insert(0, os.path.join(ROOT, "tests"))

from processes import run_horovodrun  # noqa: E402  pylint: disable=wrong-import-position


def run_once(horovod_broadcast, seconds):
    """One stress job; returns (crashed, wall seconds, how it ended)."""
    # The tag marks the job's processes on their command lines, so all of them can be killed.
    marker = "horovod_broadcast_race-%s" % uuid.uuid4().hex
    argv = [sys.executable, WORKER, "stress", "--seconds", str(seconds), "--tag", marker]
    argv += ["--horovod-broadcast"] if horovod_broadcast else []
    tic = time.time()
    # A freed name of garbage length can make the worker copy tens of GB before it dies: a
    # limit on its address space turns that into an abort.
    code, output = run_horovodrun(1, argv, seconds + 120, marker,
                                  preexec_fn=lambda: _limit_memory(6 << 30))
    if code is None:
        how = "timeout"
    elif "Segmentation fault" in output:
        how = "segfault"
    elif "status code 134" in output or "Aborted" in output:
        how = "abort"
    elif code != 0:
        how = "exit %d" % code
    else:
        how = "ok"
    return code != 0, time.time() - tic, how


def _limit_memory(num_bytes):
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (num_bytes, num_bytes))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=20.0, help="broadcasting time per repeat")
    parser.add_argument("--busy", type=int, default=2, help="busy-loop processes beside the job")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                      "horovod_broadcast_race.json"))
    args = parser.parse_args(argv)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    results = {}
    try:
        for label, horovod_broadcast in (("horovod broadcast_", True),
                                         ("HorovodBackend (all-reduce)", False)):
            runs = []
            for repeat in range(args.repeats):
                crashed, seconds, how = run_once(horovod_broadcast, args.seconds)
                runs.append({"crashed": crashed, "seconds": round(seconds, 1), "how": how})
                print("%-28s repeat %d: %s after %.1f s" % (label, repeat + 1, how, seconds),
                      flush=True)
            results[label] = runs
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    print("\n| broadcast through | crashed | repeats | seconds per repeat |")
    print("|---|---|---|---|")
    for label, runs in results.items():
        print("| %s | %d | %d | %s |" % (label, sum(r["crashed"] for r in runs), len(runs),
                                          args.seconds))
    with open(args.out, "w") as fout:
        json.dump({"command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
                   "busy_processes": args.busy, "seconds": args.seconds, "runs": results},
                  fout, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
