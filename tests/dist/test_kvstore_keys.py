"""The KVStore backend's own collectives keep a bounded set of keys on the servers."""
import io
import os
import sys
import uuid

import pytest

from gluon_elastic.launch import Group

pytestmark = pytest.mark.dist
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEYS_TOKEN_VAR = "GLUON_ELASTIC_KV_KEYS_TEST_TOKEN"
sys.path.insert(0, os.path.join(ROOT, "tests"))

# pylint: disable-next=wrong-import-position
from processes import json_lines, kill_processes_with_token  # noqa: E402


@pytest.mark.timeout(240)
def test_repeated_collectives_reuse_the_servers_memory():
    """broadcast_arrays and allgather_object reuse their keys: 50 more rounds of a 4 MB broadcast
    grow the servers' resident memory by less than 10 % (with a fresh key per call: + 200 MB,
    about 70 %; the servers start near 290 MB, most of it MXNet's library)."""
    output, token = io.StringIO(), uuid.uuid4().hex
    worker = os.path.join(ROOT, "tests", "workers", "kv_keys.py")
    group = Group([sys.executable, worker, KEYS_TOKEN_VAR], 2, 1, output=output,
                  env={KEYS_TOKEN_VAR: token})
    try:
        code = group.start().wait(timeout=200)
    finally:
        leftovers = kill_processes_with_token(KEYS_TOKEN_VAR, token)
    assert leftovers == []
    assert code == 0, output.getvalue()[-3000:]
    (row,) = json_lines(output.getvalue(), key="after_first")
    assert row["after_first"] > 4 * 1024 * 1024      # the servers hold the broadcast array
    assert row["after_last"] < 1.1 * row["after_first"]
