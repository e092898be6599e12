"""`b3 plan` on fake measurements and fake workers: the candidates that make a global batch, the
memory lines and which candidates are measured, the leader against the others, the lead read
either way round; then the command end to end once on a tiny model, and its refused input."""

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from b3core.errors import B3Error
from b3core.measuring import isolation, runner
from b3core.measuring.result import PeakMemory, StepResult
from b3core.measuring.stats import Measurement
from b3core.spec.step import StepSpec
from b3core.studies import plan as planning
from b3core.studies.interleaved import Comparison
from b3core.studies.plan import Levers, Plan, PlanSettings, candidates_for, probe_sizes, run_plan
from tests.cli_helpers import b3_here

pytestmark = pytest.mark.untimed  # fake measurements and workers; the end-to-end run accepts any

BASE = StepSpec("simple_cnn", 1, device="cpu")
FP32 = Levers(("fp32",), ("none", "blocks"))
MiB = 2**20


def test_the_candidates_are_every_micro_batch_that_makes_the_global_batch():
    names = [c.name for c in candidates_for(BASE, 16, 1, Levers(("fp32",), ("none",)), 64)]
    assert names == ["16x1 fp32", "8x2 fp32", "4x4 fp32", "2x8 fp32", "1x16 fp32"]
    two_ranks = candidates_for(BASE, 16, 2, Levers(("fp32",), ("none",)), 4)
    assert [c.name for c in two_ranks] == ["8x1x2r fp32", "4x2x2r fp32", "2x4x2r fp32"]
    assert all(c.spec.samples_per_step * 2 == 16 for c in two_ranks)
    both = candidates_for(BASE, 4, 1, FP32, 64)
    assert {c.spec.activation_checkpointing for c in both} == {"none", "blocks"} and len(both) == 6
    with pytest.raises(B3Error, match="N=1000 is not a multiple of the 3 ranks"):
        candidates_for(BASE, 1000, 3, FP32, 64)
    with pytest.raises(B3Error, match="positive integer"):
        candidates_for(BASE, 0, 1, FP32, 64)


def test_the_probes_are_the_middle_micro_batch_and_the_largest_but_one_walking_down():
    assert probe_sizes([256, 128, 64, 32, 16, 8, 4]) == [32, 128, 64, 16, 8, 4]
    assert probe_sizes([8, 4, 2, 1]) == [4, 2, 1]
    assert probe_sizes([1]) == [1]


def fake_result(spec: StepSpec, peak: int, rate: float) -> StepResult:
    step_s = spec.samples_per_step / rate
    return StepResult(
        spec, Measurement((step_s,), spec.samples_per_step, 1, "blocked"),
        PeakMemory(peak, None, "fake"), "fake cpu",
    )  # fmt: skip


class FakeMachine:
    """Peak memory: 100 MiB + 1 MiB a sample of the micro-batch (checkpointing: 0.5 MiB), and
    2 MiB more with accumulation (the gradients held); samples/s from a table per lever."""

    def __init__(self, rates, device_bytes=None):
        self.rates, self.measured, self.device_bytes = rates, [], device_bytes

    def peak(self, spec: StepSpec) -> int:
        per_sample = 0.5 if spec.activation_checkpointing == "blocks" else 1.0
        held = 2 if spec.accumulation_steps > 1 else 0
        return int((100 + held + per_sample * spec.batch_size) * MiB)

    def rate(self, spec: StepSpec) -> float:
        return self.rates[(spec.activation_checkpointing, spec.batch_size)]

    def measured_peak(self, spec, budget, peak_tflops=None, ranks=1):
        self.measured.append(
            (spec.batch_size, spec.accumulation_steps, spec.activation_checkpointing)
        )
        peak = self.peak(spec)
        if (budget is not None and peak > budget) or peak > (self.device_bytes or peak):
            return None
        return fake_result(spec, peak, self.rate(spec) if budget is not None else 1.0)


class FakeWorker:
    """Each unit's update at its samples/s, with a process effect and block noise."""

    def __init__(self, units_rate, rng, clock):
        self.units_rate, self.rng, self.clock = units_rate, rng, clock
        self.effect = rng.normal(0, 0.05)

    def ask(self, op, key="", **arguments):
        if op == "hello":
            return {"b3core_version": "test"}
        spec = StepSpec.from_dict(arguments["spec"]) if op == "prepare" else None
        if op == "prepare":
            self.units_rate.setdefault(key, self.units_rate["by_spec"](spec))
            return {"step_s": 1.0}
        step_s = spec_s = 1 / self.units_rate[key] * math.exp(self.effect)
        times = [spec_s * math.exp(self.rng.normal(0, 0.01)) for _ in range(arguments["calls"])]
        self.clock[0] += step_s * arguments["calls"]
        return {"times": [t * 64 for t in times]}  # seconds per update of the 64 samples

    def retire(self):
        pass

    def close(self):
        pass


def fake_plan(monkeypatch, rates, budget=180 * MiB, device_bytes=None, **settings):
    machine = FakeMachine(rates, device_bytes)
    monkeypatch.setattr(planning, "measured_peak", machine.measured_peak)
    rng, clock = np.random.default_rng(0), [0.0]
    units_rate = {"by_spec": lambda spec: machine.rate(spec) / 64}

    def start():
        clock[0] += 1.0
        return FakeWorker(units_rate, rng, clock)

    options = PlanSettings(**{"max_time_s": 60.0, **settings})
    plan = Plan(BASE, 64, 1, budget, options)
    return run_plan(plan, FP32, start, clock=lambda: clock[0]), machine


RATES = {("none", m): 100.0 * (1 + m / 64) for m in (1, 2, 4, 8, 16, 32, 64)} | {
    ("blocks", m): 80.0 * (1 + m / 64) for m in (1, 2, 4, 8, 16, 32, 64)
}


def test_a_plan_measures_the_largest_that_may_fit_and_names_the_fastest_with_its_lead(monkeypatch):
    plan, machine = fake_plan(monkeypatch, RATES)
    by_name = {c.name: c for c in plan.candidates}
    # 64x1 is predicted at 164 MiB, within 15% of the 180 MiB budget: measured, it fits
    assert by_name["64x1 fp32"].timed and by_name["32x2 fp32"].timed
    assert by_name["16x4 fp32"].feasible and not by_name["16x4 fp32"].timed
    assert "predicted" in by_name["16x4 fp32"].why
    # the probes (accumulation 2) and then the candidates, largest first
    assert (64, 1, "none") in machine.measured and (16, 4, "none") not in machine.measured
    ranked = plan.ranking()
    assert ranked[0].name == "64x1 fp32"
    lead = plan.lead()
    assert lead.first == "64x1 fp32" and lead.verdict == "faster" and lead.ci[0] > 1
    record = plan.to_dict()
    assert record["recommendation"]["name"] == "64x1 fp32"
    assert record["recommendation"]["lead"]["verdict"] == "faster"
    assert len(plan.run.comparisons) == len(plan.timed) - 1  # the leader against each other


def test_a_candidate_predicted_far_over_the_budget_is_not_run(monkeypatch):
    plan, machine = fake_plan(monkeypatch, RATES, budget=140 * MiB)
    by_name = {c.name: c for c in plan.candidates}
    assert by_name["64x1 fp32"].feasible is False and "predicted" in by_name["64x1 fp32"].why
    assert (64, 1, "none") not in machine.measured
    assert by_name["64x1 fp32 ckpt-blocks"].timed  # 132 MiB with checkpointing
    for c in plan.candidates:
        if c.feasible and c.timed:
            assert c.peak_bytes <= 140 * MiB


def test_a_budget_below_the_models_own_state_is_one_line(monkeypatch):
    with pytest.raises(B3Error, match="below what simple_cnn holds before any sample"):
        fake_plan(monkeypatch, RATES, budget=50 * MiB)


def test_a_lead_read_the_other_way_round_inverts_ratio_interval_and_verdict():
    c = Comparison("a", "b", 0.02, [0.1, 0.12])
    c.ratio, c.ci, c.level, c.verdict = 1.1, (1.05, 1.15), 0.95, "faster"
    flipped = planning._reversed(c)
    assert (flipped.first, flipped.second, flipped.verdict) == ("b", "a", "slower")
    assert flipped.ratio == pytest.approx(1 / 1.1)
    assert flipped.ci == pytest.approx((1 / 1.15, 1 / 1.05))


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--global-batch", "0"], "--global-batch"),
        (["--global-batch", "8", "--precisions", "fp99"], "--precisions: choose from"),
        (["--global-batch", "8", "--checkpointing", "sometimes"], "--checkpointing: choose"),
        (["--global-batch", "9", "--nproc-per-node", "2"], "not a multiple of the 2 ranks"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, fragment):
    proc = b3_here("plan", "--model", "simple_cnn", *args, "--device", "cpu")
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_b3_plan_end_to_end(tmp_path):
    """Real measurements and workers on a tiny model: the JSON holds the table and the
    recommendation, and every candidate called feasible and timed ran within the budget."""
    out = tmp_path / "plan.json"
    proc = subprocess.run(
        [sys.executable, "-m", "b3core.cli", "plan", "--model", "simple_cnn", "--image-size", "8",
         "--global-batch", "16", "--memory-budget", "64MiB", "--device", "cpu",
         "--checkpointing", "none", "--max-accumulation", "4",
         "--max-time", "6", "--epoch-time", "0.1", "--min-epochs", "3", "--json", str(out),
         "--peak-tflops", "0.5",
         "--plot", str(tmp_path / "plan.png")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads(out.read_text())
    assert record["format"] == "b3/plan/2" and record["recommendation"]["name"]
    timed = [c for c in record["candidates"] if c["timed"]]
    assert len(timed) >= 2 and all(c["measured_peak_bytes"] <= 64 * MiB for c in timed)
    assert all(c["samples_per_s"] > 0 for c in timed)
    # MFU divides by the peak given, not by this CPU's measured matmul rate
    assert {c["result"]["peak_flops_source"] for c in timed} == {"--peak-tflops"}
    assert all(c["result"]["peak_flops_per_s"] == 0.5e12 for c in timed)
    assert "Fastest:" in proc.stdout and "Learning rate for batch 16" in proc.stdout
    assert (tmp_path / "plan.png").stat().st_size > 0


def test_a_convergence_study_gives_the_time_to_target_of_the_recommendation(monkeypatch):
    from b3core.studies import converge

    plan, _ = fake_plan(monkeypatch, RATES)
    from b3core.studies.converge_runs import ConvergeRun, CurvePoint

    def studied(batch: int, seed: int, steps: int | None) -> ConvergeRun:
        """A study's run that reached its target after `steps` updates (None: never)."""
        point = None
        if steps is not None:
            point = CurvePoint(
                update=steps, samples=steps * batch, epochs=1.0, seconds=1.0, batch_size=batch,
                lr=0.1, train_loss=0.5, val_accuracy=0.9,
            )  # fmt: skip
        return ConvergeRun.finished(
            curve=[point] if point else [], at_target=point, batch_size=batch, seed=seed,
            accumulation_steps=1, peak_lr=0.1, updates=200, noise_scale=None,
        )  # fmt: skip

    runs = {
        (64, 0): studied(64, 0, 100),
        (64, 1): studied(64, 1, 120),
        (64, 2): studied(64, 2, None),
        (32, 0): studied(32, 0, 10),
    }
    header = {"study": {"step": {"model": "simple_cnn"}}}
    monkeypatch.setattr(converge, "read_log", lambda path: (header, runs))
    prediction = planning.time_to_target(plan, "study")
    update_s = 64 / plan.rate(plan.ranking()[0])[0]
    assert prediction["steps_to_target"] == 110 and (prediction["reached"], prediction["runs"]) == (
        2,
        3,
    )
    assert prediction["seconds"] == pytest.approx(110 * update_s)
    header["study"]["step"]["model"] = "resnet18"
    with pytest.raises(B3Error, match="trained resnet18"):
        planning.time_to_target(plan, "study")


def test_equal_leaders_tie_to_the_smaller_peak(monkeypatch):
    """64x1 runs 0.5% faster than 32x2, within the margin: the one with less memory is
    recommended, though it is not the fastest."""
    equal = {**RATES, ("none", 64): 200.5, ("none", 32): 199.5}
    plan, _ = fake_plan(monkeypatch, equal)
    lead = plan.lead()
    assert lead.verdict == "equivalent" and {lead.first, lead.second} == {"64x1 fp32", "32x2 fp32"}
    assert plan.ranking()[0].name == "64x1 fp32" and plan.recommended().name == "32x2 fp32"
    assert plan.to_dict()["recommendation"]["name"] == "32x2 fp32"


def test_a_probe_that_does_not_fit_is_replaced_by_the_next_smaller(monkeypatch):
    plan, _ = fake_plan(monkeypatch, RATES, device_bytes=125 * MiB)
    probes = {m.lever: m.probes for m in plan.memory}["fp32"]
    assert list(probes) == [8, 32, 16] and probes[32] is None
    fit = {m.lever: m.fit for m in plan.memory}["fp32"]
    assert fit.per_sample_bytes == pytest.approx(MiB) and fit.batch_sizes == (8, 16)


def test_past_a_probe_that_does_not_fit_only_smaller_ones_are_tried(monkeypatch):
    plan, machine = fake_plan(monkeypatch, RATES, device_bytes=105 * MiB)
    probes = {m.lever: m.probes for m in plan.memory}["fp32"]
    assert probes[8] is None and all(m < 8 for m in list(probes)[1:])


def test_a_world_of_ranks_is_probed_and_measured_as_that_world(monkeypatch):
    """Under --nproc-per-node, every probe and measured run is a data-parallel world of the
    plan's ranks (a rank's peak holds DDP's gradient buckets), on CPU each rank with its share
    of the host's guard; a single rank measures in this process."""
    machine, worlds = FakeMachine(RATES), []

    def in_ranks(spec, timing, nproc_per_node, memory_budget=None, seed=0):
        worlds.append((f"{nproc_per_node} ranks", memory_budget))
        return machine.measured_peak(spec, None)

    def in_this_process(spec, timing, memory_budget=None, seed=0):
        worlds.append(("this process", memory_budget))
        return machine.measured_peak(spec, None)

    monkeypatch.setattr(isolation, "measure_in_ranks", in_ranks)
    monkeypatch.setattr(runner, "measure", in_this_process)
    monkeypatch.setattr(planning, "default_host_budget", lambda: 1000 * MiB)
    units_rate, clock = {"by_spec": lambda spec: machine.rate(spec) / 64}, [0.0]

    def start():
        return FakeWorker(units_rate, np.random.default_rng(0), clock)

    for ranks in (2, 1):
        worlds.clear()
        plan = Plan(BASE, 64, ranks, None, PlanSettings(max_time_s=5.0))
        run_plan(plan, Levers(("fp32",), ("none",)), start, clock=lambda: clock[0])
        probes = len(plan.memory[0].probes)
        assert len(worlds) == probes + len(plan.timed) and probes >= 2
        assert {world for world, _ in worlds} == {"2 ranks" if ranks == 2 else "this process"}
        assert {budget for _, budget in worlds[:probes]} == {1000 * MiB // ranks}


def test_a_world_of_ranks_counts_every_ranks_samples(monkeypatch):
    """Each unit's step is one rank's share: its rate over the world is the ranks' sum, and
    MFU divides by every rank's device."""
    from b3core.measuring.result import Peak

    plan, _ = fake_plan(monkeypatch, RATES)
    best = plan.ranking()[0]
    one_rank = plan.rate(best)[0]
    best.result = dataclasses.replace(best.result, flops_per_step=10**9, peak=Peak(1e12, "x"))
    mfu = plan.mfu(best)
    plan.ranks = plan.run.world_size = 2
    assert plan.rate(best)[0] == pytest.approx(2 * one_rank)
    assert plan.mfu(best) == pytest.approx(mfu)
