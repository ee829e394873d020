"""Host discovery for ``horovodrun --host-discovery-script`` driven by a schedule of training progress.

A schedule lists which hosts (and slots) exist from which progress value on::

    0:2;1200:3;4400:1                       # localhost with 2, then 3, then 1 slot
    0:localhost:2,127.0.0.1:1               # two names for this machine (failure tests)

Items are ``PROGRESS:HOSTS`` separated by ``;``; ``HOSTS`` is a slot count on ``localhost`` or a
comma-separated list of ``host:slots``. The progress value is read from a file that the training
job rewrites (its ``--progress-file``); while the file is missing, progress is 0.

    python scripts/discovery.py hosts --schedule '0:2;1200:3' --progress-file /tmp/p
    python scripts/discovery.py write --schedule '0:2;1200:3' --progress-file /tmp/p --out d.sh

``write`` generates the executable script that horovodrun calls; ``hosts`` prints the current host
list (what the script runs). Standard library only: the driver calls it every second.
"""
import argparse
import os
import shlex
import stat
import sys

__all__ = ["parse_schedule", "hosts_at", "read_progress", "write_script"]


def parse_schedule(text):
    """Parse a discovery schedule into ``[(progress, [(host, slots), ...]), ...]``.

    Raises
    ------
    ValueError
        When an item is malformed, progress values do not start at 0 and increase, or a slot
        count is not a positive integer.
    """
    schedule = []
    for item in text.split(";"):
        item = item.strip()
        if not item:
            continue
        head, sep, spec = item.partition(":")
        if not sep:
            raise ValueError("discovery schedule items are PROGRESS:HOSTS, got %r" % item)
        try:
            progress = int(head)
        except ValueError:
            raise ValueError("progress must be an integer in %r" % item) from None
        hosts = []
        if spec.strip().isdigit():
            hosts.append(("localhost", int(spec)))
        else:
            for entry in spec.split(","):
                host, sep, slots = entry.strip().rpartition(":")
                if not sep or not host or not slots.isdigit():
                    raise ValueError("hosts are HOST:SLOTS, got %r in %r" % (entry, item))
                hosts.append((host, int(slots)))
        if any(slots <= 0 for _, slots in hosts):
            raise ValueError("slot counts must be >= 1 in %r" % item)
        schedule.append((progress, hosts))
    steps = [progress for progress, _ in schedule]
    if not steps or steps[0] != 0 or any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError("discovery schedule must start at progress 0 and increase, got %r" % text)
    return schedule


def hosts_at(schedule, progress):
    """Hosts of ``schedule`` at ``progress``: the last item whose progress is reached."""
    current = schedule[0][1]
    for start, hosts in schedule:
        if progress >= start:
            current = hosts
    return current


def world_size_at(schedule, progress):
    """Total slots of ``schedule`` at ``progress``."""
    return sum(slots for _, slots in hosts_at(schedule, progress))


def read_progress(path):
    """Integer progress stored in ``path`` (0 while it does not exist or is being replaced)."""
    try:
        with open(path) as fin:
            return int(fin.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def write_progress(path, progress):
    """Atomically replace ``path`` with ``progress`` (the discovery script may read it any time)."""
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "w") as fout:
        fout.write("%d\n" % progress)
    os.replace(tmp, path)


def write_script(path, schedule_text, progress_file, python=None):
    """Write an executable discovery script for horovodrun and return its path."""
    parse_schedule(schedule_text)  # refuse a bad schedule now, not inside the driver
    python = python or sys.executable
    command = [python, os.path.abspath(__file__), "hosts", "--schedule", schedule_text,
               "--progress-file", os.path.abspath(progress_file)]
    with open(path, "w") as fout:
        fout.write("#!/bin/sh\nexec %s\n" % " ".join(shlex.quote(part) for part in command))
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("hosts", "write"))
    parser.add_argument("--schedule", required=True, help="PROGRESS:HOSTS;... (see above)")
    parser.add_argument("--progress-file", required=True)
    parser.add_argument("--out", help="script to write (action 'write')")
    args = parser.parse_args(argv)
    try:
        schedule = parse_schedule(args.schedule)
    except ValueError as err:
        parser.error(str(err))
    if args.action == "write":
        if not args.out:
            parser.error("write needs --out")
        print(write_script(args.out, args.schedule, args.progress_file))
        return
    for host, slots in hosts_at(schedule, read_progress(args.progress_file)):
        print("%s:%d" % (host, slots))


if __name__ == "__main__":
    main()
