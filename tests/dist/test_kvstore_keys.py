"""The KVStore backend's own collectives keep a bounded set of keys on the servers."""
import os
import sys

import pytest

pytestmark = pytest.mark.dist
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests"))

# pylint: disable-next=wrong-import-position
from processes import GROUP_TOKEN_VAR, json_lines, run_kvstore_group  # noqa: E402


@pytest.mark.timeout(240)
def test_repeated_collectives_reuse_the_servers_memory():
    """broadcast_arrays and allgather_object reuse their keys: 50 more rounds of a 4 MB broadcast
    grow the servers' resident memory by less than 10 % (with a fresh key per call: + 200 MB,
    about 70 %; the servers start near 290 MB, most of it MXNet's library)."""
    worker = os.path.join(ROOT, "tests", "workers", "kv_keys.py")
    code, text = run_kvstore_group([sys.executable, worker, GROUP_TOKEN_VAR], 2, timeout=200)
    assert code == 0, text[-3000:]
    (row,) = json_lines(text, key="after_first")
    assert row["after_first"] > 4 * 1024 * 1024      # the servers hold the broadcast array
    assert row["after_last"] < 1.1 * row["after_first"]
