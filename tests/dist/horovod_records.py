"""Reading the records of tests/workers/horovod_elastic.py and the invariants every job must keep.

Rank 0 writes ``rank0.jsonl`` (start, step, commit, end and action records) and every rank writes
``indices.<pid>.jsonl``; see the worker's docstring.
"""
import json
import os


class Job:
    """One finished elastic job: exit code, output, rank 0's records, every rank's indices."""

    def __init__(self, log_dir, returncode, output, wall_seconds=None):
        self.log_dir = log_dir
        self.returncode = returncode
        self.output = output
        self.wall_seconds = wall_seconds
        with open(os.path.join(log_dir, "rank0.jsonl")) as fin:
            self.records = [json.loads(line) for line in fin]
        self.indices = []
        for name in sorted(os.listdir(log_dir)):
            if name.startswith("indices."):
                with open(os.path.join(log_dir, name)) as fin:
                    self.indices.extend(json.loads(line) for line in fin)

    def events(self, kind):
        return [r for r in self.records if r["event"] == kind]

    def committed_steps(self):
        """Rank 0's step records of the work that stands: the latest run of each iteration."""
        latest = {}
        for record in self.events("step"):
            latest[record["iteration"]] = record
        return [latest[i] for i in sorted(latest)]

    def worker_lines(self):
        """Lines the workers wrote (Horovod prefixes them with ``[rank]``)."""
        return "\n".join(line for line in self.output.splitlines() if line.startswith("["))


def assert_clean_exit(job):
    """Exit code 0, one end, and no worker aborted, crashed or printed a traceback."""
    assert job.returncode == 0, job.output[-4000:]
    for text in ("has been removed from elastic job", "terminate called", "Aborted",
                 "Segmentation fault", "Traceback", "Terminated"):
        assert text not in job.worker_lines(), job.output[-4000:]
    assert len(job.events("end")) == 1


def assert_identical_after_every_reset(job):
    """Every rank holds the same parameters and momentum after each (re)start and at the end."""
    for record in job.events("start") + job.events("end"):
        assert len(record["param_digests"]) == record["world_size"]
        assert len(set(record["param_digests"])) == 1, record
        assert len(set(record["momentum_digests"])) == 1, record


def assert_exactly_once(job, epochs, num_samples):
    """Every sample of every epoch trained exactly once in committed work, shares matching."""
    latest_generation = {}
    for record in job.indices:
        key = record["iteration"]
        latest_generation[key] = max(latest_generation.get(key, -1), record["generation"])
    per_epoch = {}
    for record in job.indices:
        if record["generation"] == latest_generation[record["iteration"]]:
            per_epoch.setdefault(record["epoch"], []).extend(record["indices"])
    assert sorted(per_epoch) == list(range(epochs))
    for epoch, indices in per_epoch.items():
        assert sorted(indices) == list(range(num_samples)), epoch
    for step in job.committed_steps():
        shares = [r for r in job.indices if r["iteration"] == step["iteration"]
                  and r["generation"] == latest_generation[step["iteration"]]]
        assert sum(len(r["indices"]) for r in shares) == step["global_batch_size"]
        assert len(shares) == step["world_size"]
    assert [s["iteration"] for s in job.committed_steps()] == \
        list(range(len(job.committed_steps())))


def assert_progress_never_behind_last_commit(job, final_progress):
    """No (re)start goes back past the last commit; the job ends with all its samples."""
    last_commit = 0
    for record in job.records:
        if record["event"] == "commit":
            assert record["progress"] >= last_commit
            last_commit = record["progress"]
        elif record["event"] == "start":
            assert record["progress"] >= last_commit, record
    assert job.events("end")[0]["progress"] == final_progress


def assert_every_invariant(job, epochs, num_samples):
    """The invariants of every elastic job: a clean exit, identical ranks after every reset, each
    sample once per epoch in committed work, no restart behind the last commit; and, where the
    job ran under a launcher that reports them (``job.leftovers``), no process left behind."""
    assert_clean_exit(job)
    assert_identical_after_every_reset(job)
    assert_exactly_once(job, epochs, num_samples)
    assert_progress_never_behind_last_commit(job, epochs * num_samples)
    if hasattr(job, "leftovers"):
        assert not job.leftovers, job.leftovers
