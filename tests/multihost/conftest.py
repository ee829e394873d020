"""Fixtures of the multi-host tests: namespace hosts with real ``sshd`` (tests/hosts.py).

Every test here is marked ``multihost``. Where hosts cannot be made (not root, no ``sshd``, no
network namespaces) the tests skip with the reason, unless ``GLUON_ELASTIC_REQUIRE_MULTIHOST=1``
(set by ``.ci/run``), where they fail: CI runs as root and must run them.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hosts import REQUIRE_VAR, unavailable_reason  # noqa: E402  pylint: disable=wrong-import-position


def require_hosts():
    """Skip (or fail, in CI) the calling test when namespace hosts cannot be made here."""
    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get(REQUIRE_VAR) == "1":
        pytest.fail("multi-host tests cannot run (%s=1): %s" % (REQUIRE_VAR, reason))
    pytest.skip("multi-host tests need namespace hosts: %s" % reason)
