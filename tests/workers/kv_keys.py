"""Worker of the bounded-keys test: the KVStore servers' memory across repeated collectives.

Each worker broadcasts a 1 M-float array (4 MB) and gathers a small object, 51 times. Rank 0
reads the resident memory of the group's servers (found by the test's token variable, named by the
first argument, and ``DMLC_ROLE=server``) after the first round and after the last, and prints
both as a JSON line.

    python tests/workers/kv_keys.py TOKEN_VAR
"""
import json
import os
import sys

import mxnet as mx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable-next=wrong-import-position
from gluon_elastic import backends  # noqa: E402
from processes import processes_with_token  # noqa: E402

ROUNDS = 51


def server_rss(token_var):
    """Resident bytes of every server process of this group."""
    total = 0
    for pid in processes_with_token(token_var, os.environ[token_var]):
        with open("/proc/%d/environ" % pid, "rb") as fin:
            if b"DMLC_ROLE=server" not in fin.read().split(b"\0"):
                continue
        with open("/proc/%d/statm" % pid) as fin:
            total += int(fin.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return total


def main():
    token_var = sys.argv[1]
    backend = backends.create("dist_sync")
    array = mx.nd.ones((1024 * 1024,)) * (backend.rank + 1)
    after_first = None
    for round_number in range(ROUNDS):
        backend.broadcast_arrays([array], name="big")
        gathered = backend.allgather_object({"rank": backend.rank, "round": round_number})
        assert [g["rank"] for g in gathered] == list(range(backend.world_size))
        assert float(array[0].asscalar()) == 1.0   # rank 0's value everywhere
        backend.barrier()
        if round_number == 0 and backend.rank == 0:
            after_first = server_rss(token_var)
    backend.barrier()
    if backend.rank == 0:
        print(json.dumps({"rank": 0, "after_first": after_first,
                          "after_last": server_rss(token_var)}), flush=True)
    backend.barrier()


if __name__ == "__main__":
    main()
