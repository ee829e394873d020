"""Host discovery script of the restart-elasticity tests: membership as a function of progress.

    python tests/workers/kv_discovery.py PROGRESS_FILE '0=localhost:2;10=localhost:2,127.0.0.1:1'

Prints the ``host:slots`` lines of the last schedule entry whose iteration threshold the
progress file (the iteration written by the worker's rank 0; 0 when missing) has reached.
"""
import sys


def main():
    progress_file, schedule = sys.argv[1:3]
    try:
        with open(progress_file) as fin:
            progress = int(fin.read().strip() or 0)
    except (OSError, ValueError):
        progress = 0
    hosts = ""
    for item in schedule.split(";"):
        threshold, members = item.split("=", 1)
        if progress >= int(threshold):
            hosts = members
    print("\n".join(hosts.split(",")))


if __name__ == "__main__":
    main()
