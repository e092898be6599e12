"""`b3 align` on fake workers and a fake clock: equal sizes are equivalent, a planted 10% effect
is faster, wide noise is inconclusive with what it could not rule out; the looks' alpha is
shared among the comparisons; each epoch is a fresh worker; a size that does not fit is named.
Then the command end to end once, and its refused input."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from b3core.spec.step import StepSpec
from b3core.studies.align import AlignSettings, comparisons_around, run_align
from b3core.studies.compare.workers import CaseFailed
from tests.cli_helpers import b3_here

pytestmark = pytest.mark.untimed  # fake workers, and an end-to-end run that accepts any verdict

SPEC = StepSpec("simple_cnn", 16, device="cpu")
START_S = 2.0  # a fresh interpreter's start


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeWorker:
    """Seconds per sample for each size, times a process effect shared by all sizes (which
    pairing cancels), one of each size's own, and block noise."""

    def __init__(self, clock, per_sample, rng, size_sd, block_sd=0.01, oom_at=None):
        self.clock, self.per_sample, self.rng, self.block_sd = clock, per_sample, rng, block_sd
        self.oom_at, self.retired, self.closed = oom_at, False, False
        shared, sds = rng.normal(0, 0.10), size_sd if isinstance(size_sd, dict) else {}
        self.effect = {s: shared + rng.normal(0, sds.get(s, size_sd)) for s in per_sample}
        clock.now += START_S

    def step_s(self, size: int) -> float:
        return self.per_sample[size] * size * math.exp(self.effect[size])

    def ask(self, op, key="", **arguments):
        if op == "hello":
            return {"b3core_version": "test", "machine": {"slug": "fake"}}
        size = int(key)
        if op == "prepare":
            if size == self.oom_at:
                raise CaseFailed("align", "out of memory (simulated)")
            self.clock.now += 3 * self.step_s(size)
            return {"step_s": self.step_s(size)}
        calls, steps = arguments["calls"], arguments["steps"]
        times = [
            self.step_s(size) * math.exp(self.rng.normal(0, self.block_sd)) for _ in range(calls)
        ]
        self.clock.now += sum(times) * steps
        return {"times": times}

    def retire(self):
        self.retired = True

    def close(self):
        self.closed = True


def fake_run(per_sample, size_sd=0.003, around=(16,), oom_at=None, **settings):
    clock, rng, started = FakeClock(), np.random.default_rng(0), []

    def start():
        started.append(FakeWorker(clock, per_sample, rng, size_sd, oom_at=oom_at))
        return started[-1]

    options = AlignSettings(**{"max_time_s": 120.0, **settings})
    run = run_align(SPEC, options, comparisons_around(around), start, clock=clock)
    return run, started


EQUAL = {15: 1e-3, 16: 1e-3, 17: 1e-3}


def test_equal_sizes_are_equivalent_and_the_run_stops_when_decided():
    run, _ = fake_run(EQUAL)
    assert [c.verdict for c in run.comparisons] == ["equivalent", "equivalent"]
    assert all(0.98 <= c.ci[0] <= c.ci[1] <= 1.02 for c in run.comparisons)
    assert run.epochs >= AlignSettings().min_epochs and run.elapsed_s < 100  # not timed out
    assert run.looks[-1]["epochs"] == run.epochs
    assert run.exit_code == 0


def test_the_sizes_alternate_one_timed_call_at_a_time():
    """A block is one call of as few steps as the clock allows, and each cycle times every
    size once: the finest interleaving, so a fresh process's slow moments fall on every size."""
    from b3core.measuring.clocks import block_steps_for

    run, started = fake_run(EQUAL)
    assert all(len(block["times_s"]) == 1 for block in run.blocks)
    first = started[0]  # the shape is judged once, from the first worker's warm-up
    assert run.steps_per_block == {str(s): block_steps_for(first.step_s(s)) for s in EQUAL}
    cycles = {}
    for block in run.blocks:
        cycles.setdefault((block["epoch"], block["cycle"]), []).append(block["unit"])
    assert all(sorted(units) == ["15", "16", "17"] for units in cycles.values())


def test_a_planted_ten_percent_effect_is_faster_with_its_interval():
    run, _ = fake_run({**EQUAL, 16: 0.9e-3})  # 16 costs 10% less per sample
    for c in run.comparisons:
        assert c.verdict == "faster" and 1.0 < c.ci[0] < 1 / 0.9 < c.ci[1] < 1.2
        assert c.describe().startswith(f"16 is faster than {c.neighbour} by 11.")


def test_wide_noise_is_inconclusive_until_the_time_is_up_and_names_what_it_could_not_rule_out():
    run, _ = fake_run(EQUAL, size_sd=0.08)
    assert {c.verdict for c in run.comparisons} == {"inconclusive"} and run.exit_code == 3
    assert run.elapsed_s >= 120 - run.elapsed_s / run.epochs
    for c in run.comparisons:
        assert c.not_ruled_out > 0.02
        assert f"up to {100 * c.not_ruled_out:.1f}% could not be ruled out" in c.describe()


def test_the_looks_share_alpha_among_the_comparisons():
    """Two aligned sizes, four comparisons: all the looks of a run spend 0.05 / 8 at each end
    of each comparison's interval (four comparisons, two directions), and each interval is at
    the level of the look that made it."""
    per_sample = {**EQUAL, 31: 1e-3, 32: 1e-3, 33: 1e-3}
    run, _ = fake_run(per_sample, size_sd=0.08, around=(16, 32))
    assert len(run.comparisons) == 4 and len(run.looks) >= 2
    assert sum(look["alpha"] for look in run.looks) == pytest.approx(0.05 / 8)
    last = run.looks[-1]["alpha"]
    assert all(c.level == pytest.approx(1 - 2 * last) for c in run.comparisons)


def test_a_comparison_keeps_the_interval_of_the_look_that_decided_it():
    """16 (10% faster) is decided at an early look; 32's neighbours are too noisy to decide,
    so the run goes on, and 16's verdict and interval stay those of its deciding look."""
    per_sample = {**EQUAL, 16: 0.9e-3, 31: 1e-3, 32: 1e-3, 33: 1e-3}
    noisy = {15: 0.003, 16: 0.003, 17: 0.003, 31: 0.08, 32: 0.08, 33: 0.08}
    run, _ = fake_run(per_sample, size_sd=noisy, around=(16, 32))
    early = [c for c in run.comparisons if c.aligned == 16]
    assert all(c.verdict == "faster" and c.decided_at < run.epochs for c in early)
    deciding = next(look for look in run.looks if look["epochs"] == early[0].decided_at)
    assert early[0].level == pytest.approx(1 - 2 * deciding["alpha"])
    assert any(c.verdict == "inconclusive" for c in run.comparisons if c.aligned == 32)


def test_every_epoch_is_a_fresh_worker_that_is_retired_after_it():
    run, started = fake_run(EQUAL)
    assert len(started) == run.epochs and all(w.retired and w.closed for w in started)
    epochs = {b["epoch"] for b in run.blocks}
    assert epochs == set(range(run.epochs))
    sizes = {(b["epoch"], b["cycle"], b["unit"]) for b in run.blocks}
    assert len(sizes) == len(run.blocks)  # each size once per cycle
    assert run.worker["b3core_version"] == "test"


def test_a_size_that_does_not_fit_is_named_and_nothing_is_judged():
    run, _ = fake_run(EQUAL, oom_at=17)
    assert run.failure == "batch 17: out of memory (simulated)" and run.exit_code == 1
    assert all(c.ci is None for c in run.comparisons)


def test_the_neighbours_asked_for():
    assert comparisons_around([16]) == [(16, 15), (16, 17)]
    assert comparisons_around([64], multiples_of_8=True) == [(64, 63), (64, 65), (64, 56), (64, 72)]


def test_a_worker_that_dies_mid_run_loses_no_epoch_already_timed(monkeypatch, tmp_path):
    from b3core.errors import B3Error
    from b3core.studies import align

    started = []

    def start():
        worker = FakeWorker(FakeClock(), EQUAL, np.random.default_rng(len(started)), 0.003)
        if started:
            worker.ask = lambda op, **kw: (_ for _ in ()).throw(B3Error("ALIGN's worker died"))
        started.append(worker)
        return worker

    monkeypatch.setattr(align, "fresh_worker", start)
    out = tmp_path / "align.json"
    argv = ["--model", "simple_cnn", "--around", "16", "--epoch-time", "0.01", "--json", str(out)]
    proc = b3_here("align", *argv, "--device", "cpu")
    assert proc.returncode == 2 and "worker died" in proc.stderr
    record = json.loads(out.read_text())
    assert record["epochs"] == 1 and {b["unit"] for b in record["blocks"]} == {"15", "16", "17"}


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--around", "1"], "no batch size B-1 below it"),
        (["--around", "16", "--margin", "0"], "between 0 and 1"),
        (["--around", "16", "--model", "no_such_net"], "unknown model 'no_such_net'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, fragment):
    model = [] if "--model" in args else ["--model", "simple_cnn"]
    proc = b3_here("align", *model, *args, "--device", "cpu")
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_b3_align_end_to_end(tmp_path):
    """Real workers: one fresh process per epoch holds the three sizes (the step endpoint's
    keys), and the JSON holds every block and a verdict per comparison."""
    out = tmp_path / "align.json"
    proc = subprocess.run(
        [sys.executable, "-m", "b3core.cli", "align", "--model", "simple_cnn", "--around", "8",
         "--image-size", "8", "--device", "cpu", "--max-time", "8", "--epoch-time", "0.2",
         "--min-epochs", "3", "--json", str(out), "--plot", str(tmp_path / "align.png")],
        capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode in (0, 3), proc.stdout + proc.stderr
    record = json.loads(out.read_text())
    assert record["format"] == "b3/align/3" and record["sizes"] == [7, 8, 9]
    assert record["epochs"] >= 2 and {b["unit"] for b in record["blocks"]} == {"7", "8", "9"}
    pairs = [(c["aligned"], c["neighbour"]) for c in record["comparisons"]]
    assert pairs == [(8, 7), (8, 9)]
    verdicts = {c["verdict"] for c in record["comparisons"]}
    assert verdicts <= {"faster", "slower", "equivalent", "inconclusive"}
    assert record["worker"]["endpoint_version"] >= 2
    assert "On this device, simple_cnn" in proc.stdout and "decision interval" in proc.stdout
    assert (tmp_path / "align.png").stat().st_size > 0


def test_an_interval_clear_of_no_difference_but_into_the_margin_says_both():
    """Four outcomes, not three: a difference shown but not beyond the margin is said so."""
    from b3core.studies.interleaved import Comparison

    c = Comparison("128", "127", 0.02)
    c.ratio, c.ci, c.verdict = 1.04, (1.011, 1.079), "inconclusive"
    assert c.describe() == (
        "128 is faster than 127 (+1.1% to +7.9%), but not shown to be by more than the ±2% margin"
    )
    c.ci = (0.95, 1.079)
    assert "could not be ruled out" in c.describe()


def test_a_tiny_alpha_over_two_epochs_leaves_an_unbounded_interval_not_a_traceback():
    from b3core.studies.interleaved import Comparison

    c = Comparison("16", "15", 0.02, epoch_log_ratios=[0.01, -0.02])
    c.look(1e-13)
    assert c.verdict == "inconclusive" and c.ci[1] == math.inf
    assert "could not be ruled out" in c.describe()
