"""The pytest-benchmark suite, run as users run it, in a subprocess."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    *"--b3-models simple_cnn --b3-batch-sizes 8,16".split(),
    *"--b3-accumulation-steps 1 --b3-device cpu".split(),
]


def run_pytest(*args, cwd, env_extra=None, plugins_dir=None):
    env = {**os.environ, **(env_extra or {})}
    if plugins_dir:
        env["PYTHONPATH"] = os.pathsep.join([str(plugins_dir), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.untimed  # records and options, at any speed
@pytest.mark.parametrize("clock", ["blocked", "per-step"])
def test_suite_reports_b3_extra_info_machine_and_summary(tmp_path, clock):
    out = tmp_path / "results.json"
    proc = run_pytest(
        REPO / "benchmarks" / "test_train_step.py",
        "--benchmark-only",
        *SMALL,
        "--b3-rounds",
        "4",
        "--b3-clock",
        clock,
        "--benchmark-json",
        out,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    machine = data["machine_info"]
    assert machine["b3_slug"] and machine["torch"] and "gpu_count" in machine
    assert len(data["benchmarks"]) == 2
    for record in data["benchmarks"]:
        info, stats = record["extra_info"], record["stats"]
        raw = info["b3_result"]["measurement"]
        k = raw["steps_per_sample"]
        assert info["clock"] == clock and (k > 1) == (clock == "blocked")
        assert stats["rounds"] == 4 and len(raw["times_s"]) == 4 and stats["iterations"] == k
        # pytest-benchmark's rounds are b3's timed samples: the mean step of each block
        assert sum(raw["times_s"]) / (4 * k) == pytest.approx(stats["mean"])
        spec = info["b3_result"]["spec"]
        samples = spec["batch_size"] * spec["accumulation_steps"]
        assert info["effective_batch_size"] == samples
        assert info["samples_per_s"] == pytest.approx(samples * 4 * k / sum(raw["times_s"]))
        assert info["peak_memory_bytes"] > 0 and info["skipped_steps"] == 0
        assert "samples_per_step" not in info  # effective_batch_size says it, once
        # the machine was sampled while pytest-benchmark timed: contended is a reading
        assert info["b3_result"]["telemetry"]["seconds"] > 0
        assert info["contended"] is info["b3_result"]["telemetry"]["contended"]
    assert "b3 summary" in proc.stdout and "samples/s (95% CI)" in proc.stdout
    # both IQRs appear in this terminal: b3 says which quartile rule is its own
    assert "b3's IQR uses quartiles by linear interpolation" in proc.stdout


@pytest.mark.untimed  # records and options, at any speed
def test_autosave_storage_is_named_by_machine_slug_and_env_settings_apply(tmp_path):
    proc = run_pytest(
        REPO / "benchmarks" / "test_inference.py",
        "--benchmark-only",
        "--benchmark-autosave",
        cwd=tmp_path,
        env_extra={
            "B3_MODELS": "simple_cnn",
            "B3_BATCH_SIZES": "8",
            "B3_ROUNDS": "3",
            "B3_DEVICE": "cpu",
        },
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from b3core.measuring.machine import machine_record

    saved = list((tmp_path / ".benchmarks" / machine_record()["slug"]).rglob("*.json"))
    assert len(saved) == 1
    records = json.loads(saved[0].read_text())["benchmarks"]
    assert [r["stats"]["rounds"] for r in records] == [3]


@pytest.mark.untimed  # records and options, at any speed
def test_case_over_memory_budget_is_skipped_and_the_run_goes_on(tmp_path):
    proc = run_pytest(
        REPO / "benchmarks" / "test_train_step.py",
        "--benchmark-only",
        *SMALL,
        "--b3-rounds",
        "3",
        "--b3-memory-budget",
        "1M",
        "-rs",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 skipped" in proc.stdout and "does not fit" in proc.stdout


@pytest.mark.untimed  # records and options, at any speed
def test_bad_option_is_a_usage_error(tmp_path):
    proc = run_pytest(
        REPO / "benchmarks" / "test_train_step.py",
        "--benchmark-only",
        "--b3-models",
        "resnet",
        cwd=tmp_path,
    )
    assert proc.returncode == 4 and "unknown model" in proc.stderr


SLOWDOWN_PLUGIN = textwrap.dedent(
    """
    import time

    from b3core.workloads.training import Trainer

    original = Trainer.step

    def slower_step(self, micro_batches):
        time.sleep(0.1)  # an injected regression: ~30x a small CPU step
        return original(self, micro_batches)

    Trainer.step = slower_step
    """
)


def test_compare_fail_catches_an_injected_slowdown_and_passes_an_unchanged_run(tmp_path):
    """The README's regression workflow, made flake-proof for noisy shared CPUs.

    A CI run saw an unchanged case's *median* move +117% (3.3 ms -> 7.1 ms), so the comparison
    uses the *min* of 10 rounds, which noise can only raise, on one case, with a +400% margin:
    a false alarm needs all 10 rounds to run 5x slow. The injected 100 ms sleep is ~30x a 3 ms
    step, so even a baseline min inflated to 20 ms still shows as +400%.
    """
    (tmp_path / "b3_slowdown.py").write_text(SLOWDOWN_PLUGIN)
    args = [
        REPO / "benchmarks" / "test_train_step.py",
        "--benchmark-only",
        *"--b3-models simple_cnn --b3-batch-sizes 8".split(),
        *"--b3-accumulation-steps 1 --b3-device cpu --b3-rounds 10".split(),
        "--benchmark-storage",
        f"file://{tmp_path / 'store'}",
    ]
    baseline = run_pytest(*args, "--benchmark-autosave", cwd=tmp_path)
    assert baseline.returncode == 0, baseline.stdout + baseline.stderr
    compare = ["--benchmark-compare", "--benchmark-compare-fail=min:400%"]
    unchanged = run_pytest(*args, *compare, cwd=tmp_path)
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    slower = run_pytest(*args, *compare, "-p", "b3_slowdown", cwd=tmp_path, plugins_dir=tmp_path)
    assert slower.returncode != 0
    assert "Performance has regressed" in slower.stdout + slower.stderr
