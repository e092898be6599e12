import json
import subprocess
import sys
from pathlib import Path

import pytest

from b3core.cli import main
from b3core.errors import B3Error
from b3core.measuring.result import PeakMemory, StepResult
from b3core.measuring.saved_results import load_benchmark_json
from b3core.measuring.stats import Measurement
from b3core.spec import StepSpec
from b3core.suites.pytest_plugin import extra_info

pytestmark = pytest.mark.untimed  # nothing here asserts on speed


def fake_results_file(path, slug, scale=1.0, model="simple_cnn"):
    """A pytest-benchmark JSON file as the b3 plugin writes it (raw times in extra_info)."""
    benchmarks = []
    for batch in (15, 16, 17):
        times = tuple(scale * batch * t for t in (0.001, 0.0011, 0.00105, 0.00098))
        result = StepResult(
            StepSpec(model, batch, device="cpu"),
            Measurement(times, batch),
            PeakMemory(batch * 2**20, None, "process_rss_growth"),
            "cpu",
        )
        benchmarks.append(
            {"name": result.spec.label, "stats": {}, "extra_info": extra_info(result)}
        )
    path.write_text(json.dumps({"machine_info": {"b3_slug": slug}, "benchmarks": benchmarks}))
    return path


REPO = Path(__file__).resolve().parents[1]


def test_loading_results_needs_neither_torch_nor_a_model_that_still_exists(tmp_path):
    """A saved result outlives its code: load it with torch and torchvision unimportable, for a
    model no registry knows."""
    path = fake_results_file(tmp_path / "gone.json", "host-gpu", model="a_model_since_removed")
    script = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, *args):\n"
        "        if name.split('.')[0] in ('torch', 'torchvision'):\n"
        "            raise ImportError(f'{name} is blocked for this test')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from b3core.measuring.saved_results import load_benchmark_json\n"
        f"r = load_benchmark_json({str(path)!r}).results[0]\n"
        "print(r.spec.model, round(r.measurement.throughput.samples_per_s))"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "a_model_since_removed"
    assert "torch" not in proc.stdout


def test_a_b3_0_1_results_file_loads_as_per_step_measurements():
    """docs/results/vm-cpu/b3-0.1/quick-profile.json was written by b3 0.1's pytest plugin."""
    loaded = load_benchmark_json(
        REPO / "docs" / "results" / "vm-cpu" / "b3-0.1" / "quick-profile.json"
    )
    assert loaded.results and all(r.measurement.clock == "per-step" for r in loaded.results)
    first = loaded.results[0]
    m = first.measurement
    assert m.throughput.samples_per_s == pytest.approx(
        first.spec.samples_per_step * len(m.times) / sum(m.times)
    )


def test_results_round_trip_through_the_json(tmp_path):
    loaded = load_benchmark_json(fake_results_file(tmp_path / "a.json", "host-gpu"))
    assert loaded.machine_slug == "host-gpu"
    assert [r.spec.batch_size for r in loaded.results] == [15, 16, 17]
    assert loaded.results[0].measurement.time.n == 4


def test_report_writes_tables_and_plot_and_compares(tmp_path, capsys):
    a = fake_results_file(tmp_path / "a.json", "host-a100")
    b = fake_results_file(tmp_path / "b.json", "host-h100", scale=0.5)
    out = tmp_path / "report"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "host-h100 / host-a100" in printed
    for name in ("report.md", "report.csv", "report.html", "report.png"):
        assert (out / name).stat().st_size > 0
    csv = (out / "report.csv").read_text().splitlines()
    assert csv[0].startswith("source,model,mode,batch") and len(csv) == 7


def test_comparison_gives_each_source_its_ratio_to_the_first(tmp_path):
    import pandas as pd

    from b3core.reports.tables import comparison_frame, results_frame

    sets = [
        load_benchmark_json(fake_results_file(tmp_path / f"{n}.json", n, scale=s))
        for n, s in (("a100", 1.0), ("h100", 0.5))
    ]
    frame = pd.concat([results_frame(s.results, source=s.machine_slug) for s in sets])
    table = comparison_frame(frame)
    assert list(table["h100 / a100"]) == pytest.approx([2.0, 2.0, 2.0], rel=1e-3)


@pytest.mark.parametrize(
    "content,fragment",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not pytest-benchmark JSON"),
        ('{"benchmarks": [{"extra_info": {"b3_spec": {}}}]}', "bad b3 record"),
        ('{"benchmarks": []}', "no b3 benchmark results"),
    ],
)
def test_corrupt_results_file_is_a_clear_error(tmp_path, content, fragment):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(B3Error, match=fragment):
        load_benchmark_json(path)


def test_report_cli_exits_2_on_a_missing_file(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
