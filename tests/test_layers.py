"""The house's layers hold: import-linter's contracts (pyproject.toml), and no backend chosen
for the user's matplotlib at import."""

import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.untimed  # nothing here asserts on speed


def test_the_import_contracts_hold():
    """spec -> workloads -> measuring -> studies -> reports -> suites -> cli, each importing
    only the layers above it; no cycles between siblings; the spec, saved results, the protocol
    and the reports load without torch."""
    lint = shutil.which("lint-imports")
    if lint is None:
        pytest.fail("import-linter is not installed: pip install -e '.[dev]'")
    proc = subprocess.run([lint], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "0 broken" in proc.stdout


def test_importing_the_reports_leaves_matplotlibs_backend_alone():
    code = (
        "import matplotlib; matplotlib.use('svg');"
        "import b3core.reports.plots, b3core.reports.compare_report,"
        " b3core.reports.converge_report, b3core.reports.scaling_report;"
        "print(matplotlib.get_backend())"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "svg", proc.stderr


def test_a_timing_worker_imports_no_scipy():
    """Every epoch of compare, align and plan starts fresh workers; what they import for a
    hello, a prepare and a block is paid once per epoch, and scipy is not needed there."""
    code = (
        "import sys, b3core.studies.compare.worker, b3core.measuring.machine;"
        "from b3core.measuring.runner import prepare, timed_blocks;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy')[:3])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr
