"""The modules that must not need MXNet (or Horovod) import and work with both blocked."""
import subprocess
import sys

import pytest

BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "mxnet" or name.startswith("mxnet.") or name.startswith("horovod"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
"""


@pytest.mark.timeout(60)
def test_arithmetic_supervisor_and_checkpoint_modules_import_with_mxnet_blocked():
    # The supervisor, the restart agent and checkpoints run where MXNet may be missing (the
    # supervisor's host); policy, schedule, flags and data are plain arithmetic.
    code = BLOCK + """
import gluon_elastic
from gluon_elastic import policy, schedule, flags, data
import gluon_elastic.supervisor, gluon_elastic.restart, gluon_elastic.checkpoint
from gluon_elastic.policy import lr_scale
assert lr_scale("linear", 64, 32) == 2.0
assert "mxnet" not in sys.modules
try:
    import mxnet
except ImportError:
    print("blocked-ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "blocked-ok"


@pytest.mark.timeout(60)
def test_metrics_reading_plot_and_progress_import_with_mxnet_blocked():
    # Plots are drawn where the run's metrics file was copied, not where it trained.
    code = BLOCK + """
from gluon_elastic import metrics, plot, progress
assert list(progress.progress([1, 2], enabled=False)) == [1, 2]
assert "mxnet" not in sys.modules
print("blocked-ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "blocked-ok"
