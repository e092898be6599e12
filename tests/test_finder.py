import json
from types import SimpleNamespace

import pytest

import b3core.studies.finder as finder
from b3core.errors import B3Error, StepOutOfMemory
from b3core.measuring.result import PeakMemory
from b3core.measuring.runner import measure
from b3core.spec import StepSpec, Timing
from b3core.studies.finder import find_max_batch

pytestmark = pytest.mark.untimed  # nothing here asserts on speed

SPEC = StepSpec("simple_cnn", 1, device="cpu")


def linear_device(fixed: int, per_sample: int, budget: int, *, bend: float = 0.0, calls=None):
    """A device whose step takes fixed + per_sample * B bytes (times (1 + bend * B / 1000):
    a memory that grows faster than the model's line), and fails above the budget."""

    def probe(spec, timing, *, isolate, memory_budget, nproc_per_node=None):
        b = spec.batch_size
        peak = int((fixed + per_sample * b) * (1 + bend * b / 1000))
        if calls is not None:
            calls.append(b)
        if peak > budget:
            raise StepOutOfMemory(spec.label, "fake OOM")
        return SimpleNamespace(memory=PeakMemory(peak, None, "fake"), workload=None)

    return probe


def edge_of(fixed, per_sample, budget, bend=0.0):
    b = 1
    while int((fixed + per_sample * (b + 1)) * (1 + bend * (b + 1) / 1000)) <= budget:
        b += 1
    return b


@pytest.mark.parametrize(
    "fixed, per_sample, budget",
    [(10**6, 200_000, 2**30), (30 * 2**20, 1_400_000, 2**30), (5 * 2**20, 30_000, 2**28)],
)
def test_guided_search_finds_a_linear_edge_in_at_most_six_probes(monkeypatch, fixed, per_sample,
                                                                 budget):  # fmt: skip
    monkeypatch.setattr(finder, "measure_maybe_isolated", linear_device(fixed, per_sample, budget))
    result = find_max_batch(SPEC, memory_budget=budget)
    edge = edge_of(fixed, per_sample, budget)
    assert result.max_batch == edge and not result.notes
    assert len(result.probes) <= 6
    assert abs(result.prediction_error) <= 0.05
    tried = {p.batch_size: p.fits for p in result.probes}
    assert tried[edge] and not tried[edge + 1]
    assert [p.phase for p in result.probes][:2] == ["fit", "fit"]


@pytest.mark.parametrize("bend", [0.05, -0.02, 0.5])
def test_guided_search_stays_exact_when_the_model_misses(monkeypatch, bend):
    """Memory that bends away from the line: the prediction misses, the search says so,
    gallops and bisects, and the edge is still exact."""
    fixed, per_sample, budget = 10**6, 200_000, 2**30
    monkeypatch.setattr(
        finder, "measure_maybe_isolated", linear_device(fixed, per_sample, budget, bend=bend)
    )
    result = find_max_batch(SPEC, memory_budget=budget)
    edge = edge_of(fixed, per_sample, budget, bend)
    assert result.max_batch == edge
    tried = {p.batch_size: p.fits for p in result.probes}
    assert tried[edge] and not tried[edge + 1]
    assert len(tried) == len(result.probes)  # no size probed twice
    assert any("missed" in note for note in result.notes)
    assert len(result.probes) < 26  # still fewer than doubling and bisection took


def test_guided_search_falls_back_when_the_second_size_does_not_fit(monkeypatch):
    monkeypatch.setattr(finder, "measure_maybe_isolated", linear_device(10**6, 10**6, 20 * 10**6))
    result = find_max_batch(SPEC, memory_budget=20 * 10**6)
    assert result.max_batch == 19
    assert any("doubling and bisection" in note for note in result.notes)


def test_the_bisecting_search_is_still_there(monkeypatch):
    monkeypatch.setattr(finder, "measure_maybe_isolated", linear_device(10**6, 200_000, 2**30))
    result = find_max_batch(SPEC, memory_budget=2**30, search="bisect")
    assert result.max_batch == edge_of(10**6, 200_000, 2**30) and len(result.probes) > 20
    assert result.first_prediction is None


def fake_device(edge: int, calls: list):
    """A device on which batches up to `edge` fit; records each probe's warm-up length."""

    class Fake:
        def __init__(self, b):
            self.memory = PeakMemory(b * 1000, None, "fake")
            self.workload = None

    def probe(spec, timing, *, isolate, memory_budget, nproc_per_node=None):
        calls.append((spec.batch_size, timing.warmup + timing.repeats))
        if spec.batch_size > edge:
            raise StepOutOfMemory(spec.label, "fake OOM")
        return Fake(spec.batch_size)

    return probe


@pytest.mark.parametrize("edge", [1, 37, 64, 1000])
def test_search_finds_the_exact_edge(monkeypatch, edge):
    calls = []
    monkeypatch.setattr(finder, "measure_maybe_isolated", fake_device(edge, calls))
    result = find_max_batch(SPEC)
    assert result.max_batch == edge
    tried = {p.batch_size: p.fits for p in result.probes}
    assert tried[edge] is True and tried[edge + 1] is False  # both sides of the edge measured
    assert all(steps >= 3 for _, steps in calls)  # at least 2 full steps before the last
    assert len(result.probes) == len(tried)  # no size probed twice
    assert result.recommended == max(1, int(edge * 0.9))


def test_search_shrinks_when_the_start_does_not_fit(monkeypatch):
    monkeypatch.setattr(finder, "measure_maybe_isolated", fake_device(5, []))
    result = find_max_batch(SPEC, start=64)
    assert result.max_batch == 5


def test_nothing_fits(monkeypatch):
    monkeypatch.setattr(finder, "measure_maybe_isolated", fake_device(0, []))
    result = find_max_batch(SPEC)
    assert result.max_batch == 0 and result.recommended == 0


def test_limit_stops_the_growth(monkeypatch):
    monkeypatch.setattr(finder, "measure_maybe_isolated", fake_device(10**6, []))
    result = find_max_batch(SPEC, limit=100)
    assert result.max_batch == 100 and result.hit_limit


def test_bad_search_arguments():
    with pytest.raises(B3Error):
        find_max_batch(SPEC, start=10, limit=5)
    with pytest.raises(B3Error):
        find_max_batch(SPEC, safety_margin=1.5)


def test_real_search_on_cpu_under_a_budget():
    """b3's own OOM path on CPU: the found edge fits the budget and one more does not."""
    budget = 120 * 2**20
    result = find_max_batch(SPEC, memory_budget=budget, limit=4096)
    assert 16 < result.max_batch < 4096
    edge = {p.batch_size: p for p in result.probes}
    assert edge[result.max_batch].fits and edge[result.max_batch].peak_bytes <= budget
    assert not edge[result.max_batch + 1].fits


def test_isolated_probe_runs_in_a_fresh_process():
    from b3core.measuring.isolation import measure_isolated

    result = measure_isolated(SPEC.replace(batch_size=4), Timing(repeats=2))
    assert result.measurement.time.n == 2 and result.workload.parameters == 41_418
    with pytest.raises(StepOutOfMemory):
        measure_isolated(SPEC.replace(batch_size=4), Timing(repeats=1), memory_budget=1024)
    assert measure(SPEC.replace(batch_size=2), Timing(repeats=2)).measurement.time.n == 2


def test_cli_find_max_batch_reports_probes_prediction_and_json(tmp_path, capsys):
    from b3core.cli import main

    out = tmp_path / "max.json"
    argv = "find-max-batch --model simple_cnn --device cpu --memory-budget 100M --limit 2048"
    assert main([*argv.split(), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "probe batch" in printed and "largest batch that fits" in printed
    assert "predicted largest batch" in printed and "error" in printed
    payload = json.loads(out.read_text())
    assert payload["recommended"] == int(payload["max_batch"] * 0.9)
    assert payload["first_fit"]["per_sample_bytes"] > 0 and "machine" in payload
    assert len(payload["probes"]) <= 6 and abs(payload["prediction_error"]) <= 0.05
    probed = {p["batch_size"]: p["fits"] for p in payload["probes"]}
    assert probed[payload["max_batch"]] and not probed[payload["max_batch"] + 1]


def test_cli_memory_compares_fit_with_analytic(capsys):
    from b3core.cli import main

    argv = "memory --model simple_cnn --device cpu --batch-sizes 32,64,128 --memory-budget 1G"
    assert main(argv.split()) == 0
    printed = capsys.readouterr().out
    assert "fit: M(B) =" in printed and "analytic fixed part: 0.6 MiB" in printed
    assert "predicted largest batch within 1024 MiB" in printed


def test_on_a_caching_allocator_the_fit_follows_tensors_and_leaves_the_slack_out(monkeypatch):
    """CUDA's reserved memory is not linear in the batch: the allocator caches freed blocks
    (here a quarter more than the tensors hold) and gives them back near its cap, keeping a
    fixed slack. The prediction follows the tensors' peak less that slack, as the real OOM does."""
    fixed, per_sample, slack, budget = 50 * 2**20, 20 * 2**20, 100 * 2**20, 10 * 2**30

    def probe(spec, timing, *, isolate, memory_budget, nproc_per_node=None):
        allocated = fixed + per_sample * spec.batch_size
        if allocated + slack > budget:
            raise StepOutOfMemory(spec.label, "fake OOM")
        cached = per_sample * (spec.batch_size - 1) // 4  # none at batch 1, as on an H100
        reserved = min(budget, allocated + slack + cached)
        return SimpleNamespace(memory=PeakMemory(allocated, reserved, "fake"), workload=None)

    monkeypatch.setattr(finder, "measure_maybe_isolated", probe)
    result = find_max_batch(SPEC, memory_budget=budget)
    edge = (budget - slack - fixed) // per_sample
    assert result.max_batch == edge and len(result.probes) <= 6
    assert result.slack_bytes == slack and result.first_prediction == edge
