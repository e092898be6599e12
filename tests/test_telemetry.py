"""Telemetry (measuring/telemetry.py) and exact memory (measuring/memory.py). NVML is replaced
by a small fake at the module boundary (load_nvml): no GPU runs in CI."""

import dataclasses
import json
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

import b3core.measuring.telemetry as telemetry
from b3core.measuring.memory import PeakMemoryTracker
from b3core.measuring.result import PeakMemory
from b3core.measuring.runner import measure
from b3core.measuring.telemetry_summary import Energy, SignalRange, TelemetrySummary
from b3core.spec import StepSpec, Timing

from .cli_helpers import b3, b3_here

CPU = "cpu"


class FakeNvml:
    """The pynvml calls telemetry makes, answering from a script: power in mW, energy in mJ."""

    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0

    def __init__(self, *, energy_counter=True, throttle_after=None, locked=False):
        self.energy_counter, self.throttle_after, self.locked = (
            energy_counter,
            throttle_after,
            locked,
        )
        self.began = time.perf_counter()
        self.energy_reads = 0

    def nvmlDeviceGetHandleByPciBusId(self, bus):  # noqa: N802 - pynvml's names
        return "gpu0"

    nvmlDeviceGetHandleByIndex = nvmlDeviceGetHandleByPciBusId  # noqa: N815

    def nvmlDeviceGetTotalEnergyConsumption(self, h):  # noqa: N802
        if not self.energy_counter:
            raise RuntimeError("Not Supported")
        self.energy_reads += 1
        return 1_000_000 + 5_000 * (self.energy_reads - 1)  # +5 J per read after the first

    def nvmlDeviceGetPowerUsage(self, h):  # noqa: N802
        return 300_000  # 300 W

    def nvmlDeviceGetEnforcedPowerLimit(self, h):  # noqa: N802
        return 700_000

    def nvmlDeviceGetClockInfo(self, h, kind):  # noqa: N802
        return 1980 if kind == self.NVML_CLOCK_SM else 2619

    nvmlDeviceGetMaxClockInfo = nvmlDeviceGetClockInfo  # noqa: N815

    def nvmlDeviceGetApplicationsClock(self, h, kind):  # noqa: N802
        return (1500 if self.locked else 1980) if kind == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetDefaultApplicationsClock(self, h, kind):  # noqa: N802
        return 1980 if kind == self.NVML_CLOCK_SM else 2619

    def nvmlDeviceGetTemperature(self, h, sensor):  # noqa: N802
        return 61

    def nvmlDeviceGetUtilizationRates(self, h):  # noqa: N802
        return SimpleNamespace(gpu=97, memory=40)

    def nvmlDeviceGetPersistenceMode(self, h):  # noqa: N802
        return 1

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):  # noqa: N802
        throttling = (
            self.throttle_after is not None
            and time.perf_counter() - self.began > self.throttle_after
        )
        return 0x4 if throttling else 0x0  # software power cap


def fake_nvml(monkeypatch, **kwargs) -> FakeNvml:
    fake = FakeNvml(**kwargs)
    monkeypatch.setattr(telemetry, "load_nvml", lambda: fake)
    return fake


GPU = torch.device("cuda", 0)  # never touched: the fake answers for it


def test_gpu_telemetry_reads_clocks_power_and_energy_from_the_counter(monkeypatch):
    fake = fake_nvml(monkeypatch)
    with telemetry.TelemetrySampler(GPU, interval_s=0.01) as sampler:
        time.sleep(0.1)
    record = sampler.summary(samples_processed=1000)
    signals = record.signals
    assert signals["gpu.sm_clock_mhz"] == SignalRange(1980, 1980, 1980)
    assert signals["gpu.power_w"].median == 300 and signals["gpu.temperature_c"].max == 61
    energy = record.energy["gpu"]
    # two counter reads, around the run: 5 J, 5 mJ per sample
    assert energy.method == "energy counter" and energy.joules == 5.0
    assert energy.j_per_sample == pytest.approx(0.005)
    assert fake.energy_reads == 2
    assert record.gpu.throttled_samples == 0
    assert not [c for c in record.contention if "GPU" in c]  # (the host's load may count)
    assert any("not locked" in w for w in record.warnings)
    assert TelemetrySummary.from_dict(json.loads(json.dumps(record.to_dict()))) == record


def test_without_an_energy_counter_power_is_integrated(monkeypatch):
    fake_nvml(monkeypatch, energy_counter=False)
    with telemetry.TelemetrySampler(GPU, interval_s=0.01) as sampler:
        time.sleep(0.2)
    energy = sampler.summary(samples_processed=10).energy["gpu"]
    assert energy.method == "power integrated over the samples"
    assert energy.joules == pytest.approx(300 * sampler_span(sampler), rel=1e-6)


def sampler_span(sampler) -> float:
    times = [t for t, _ in sampler.samples["gpu"]]
    return times[-1] - times[0]


def test_throttling_is_named_marks_the_result_and_its_blocks_can_be_dropped(monkeypatch):
    fake_nvml(monkeypatch, throttle_after=0.15)
    with telemetry.TelemetrySampler(GPU, interval_s=0.01) as sampler:
        spans = []
        for _ in range(6):
            began = time.perf_counter()
            time.sleep(0.05)
            spans.append((began, time.perf_counter()))
    flags = [sampler.throttled_during(*span) for span in spans]
    assert flags[:2] == [False, False] and flags[-2:] == [True, True]
    record = sampler.summary(samples_processed=6)
    assert record.contended and record.gpu.throttle_reasons == ("software power cap",)
    assert "software power cap" in " ".join(record.contention)
    assert record.to_dict()["contended"] is True


def test_the_machine_record_of_a_gpu_keeps_its_limits_and_clock_settings(monkeypatch):
    fake_nvml(monkeypatch, locked=True)
    state = telemetry.gpu_state(GPU)
    assert state["power_limit_w"] == 700 and state["persistence_mode"] is True
    assert state["application_clocks_mhz"] == {"sm": 1500, "memory": 2619}
    assert state["clocks_locked"] is True
    fake_nvml(monkeypatch, locked=False)
    assert telemetry.gpu_state(GPU)["clocks_locked"] is False


def test_without_nvml_the_gpu_is_unavailable_with_the_reason(monkeypatch):
    def missing():
        raise telemetry.Unavailable("the nvidia-ml-py package is not installed")

    monkeypatch.setattr(telemetry, "load_nvml", missing)
    with telemetry.TelemetrySampler(GPU, interval_s=0.01) as sampler:
        pass
    record = sampler.summary(1)
    assert "nvidia-ml-py" in record.unavailable["gpu"]
    assert "nvidia-ml-py" in record.energy["gpu"].unavailable
    assert "nvidia-ml-py" in telemetry.gpu_state(GPU)["nvml"]


BUSY_LOOP = "import time\nend = time.time() + 60\nwhile time.time() < end:\n    pass\n"


@pytest.mark.slow
def test_a_busy_process_beside_the_measurement_marks_it_contended():
    spec, timing = StepSpec("simple_cnn", 16, device=CPU), Timing(repeats=20, block_steps=5)
    quiet = measure(spec, timing)
    busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(2)]
    try:
        time.sleep(0.5)
        loaded = measure(spec, timing)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    assert loaded.contended, loaded.telemetry
    assert loaded.telemetry.cpu.outside_load_cores > telemetry.OUTSIDE_LOAD_LIMIT_CORES
    assert any(w.startswith("contended: other processes kept") for w in loaded.warnings)
    assert not quiet.contended, quiet.telemetry  # the quiet run, for contrast

    from b3core.reports.tables import results_frame

    frame = results_frame([quiet, loaded])
    assert list(frame["contended"]) == [False, True] or list(frame["contended"]) == [True, False]
    assert frame.loc[frame["contended"], "notes"].str.contains("contended").all()


def test_our_own_processes_are_not_outside_load(tmp_path):
    """Under DDP the other ranks are the measurement's own: their CPU time is not outside load."""
    busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    try:
        time.sleep(0.3)
        with telemetry.TelemetrySampler(torch.device(CPU), pids=[busy.pid]) as sampler:
            time.sleep(1.0)
    finally:
        busy.kill()
        busy.wait()
    assert sampler.summary(1).cpu.outside_load_cores < telemetry.OUTSIDE_LOAD_LIMIT_CORES


def test_step_json_carries_telemetry_and_says_what_is_unavailable(tmp_path):
    out = tmp_path / "step.json"
    proc = b3("step", "--model", "simple_cnn", "--batch-size", "8", "--device", CPU, "--repeats",
              "3", "--json", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())["result"]
    record = result["telemetry"]
    assert set(record["signals"]) >= {"cpu.steal_share", "cpu.outside_load_cores"}
    assert record["energy"]["gpu"]["unavailable"] == "the measurement ran on cpu"
    assert "unavailable" in record["energy"]["cpu"] or "joules" in record["energy"]["cpu"]
    assert result["contended"] in (True, False)
    assert "telemetry     CPU steal" in proc.stdout
    assert "USDT" not in proc.stderr and "profiler_start" not in proc.stderr  # kineto's noise


def test_no_telemetry_leaves_none(tmp_path):
    result = measure(StepSpec("simple_cnn", 4, device=CPU), Timing(repeats=2, telemetry=False))
    assert result.telemetry is None and not result.contended


@pytest.mark.parametrize(
    "argv, says",
    [
        (["step", "--batch-size", "4", "--device", CPU, "--discard-throttled"], "needs a CUDA GPU"),
        (
            ["step", "--batch-size", "4", "--device", CPU, "--discard-throttled", "--no-telemetry"],
            "needs telemetry",
        ),  # fmt: skip
        (["find-max-batch", "--device", CPU, "--memory-budget", "100T"], "more than this machine"),
    ],
)
def test_bad_telemetry_and_budget_input_is_one_line(argv, says):
    proc = b3_here(*argv)
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# ---------------------------------------------------------------- exact memory


def test_cpu_peak_is_the_exact_tensor_peak_not_the_resident_set():
    with PeakMemoryTracker(torch.device(CPU)) as tracker:
        a = torch.empty(1_000_000)  # 4 MB
        b = torch.empty(500_000)  # 2 MB: 6 MB live
        del b
        c = torch.empty(250_000)  # 1 MB: 5 MB live
        tracker.warmed()
        d = torch.empty(10_000_000)  # after the warm-up: not profiled
    peak = tracker.result()
    del a, c, d
    assert peak.peak_bytes == 6_000_000 and peak.source == "cpu_tensor_peak"
    assert peak.rss_growth_bytes is not None  # kept as the secondary figure


def test_a_measured_step_reports_the_tensor_peak_with_rss_beside_it():
    result = measure(StepSpec("simple_cnn", 64, device=CPU), Timing(repeats=2))
    memory = result.memory
    assert memory.source == "cpu_tensor_peak" and memory.rss_growth_bytes > 0
    # weights, gradients and Adam's two moments at least, and activations of 64 samples
    assert memory.peak_bytes > 4 * 4 * result.workload.parameters
    assert PeakMemory.from_dict(result.to_dict()["memory"]) == memory


def test_cuda_peak_memory_reports_the_allocator_slack_and_what_it_bounds():
    memory = PeakMemory(800, 1000, "cuda_max_allocated", outside_torch_bytes=500)
    assert memory.fragmentation_bytes == 200 and memory.limit_bytes == 1000
    assert PeakMemory(800, None, "cpu_tensor_peak").limit_bytes == 800
    assert memory.to_dict()["fragmentation_bytes"] == 200


def test_asv_and_pytest_benchmark_carry_the_contended_mark():
    from b3core.suites.asv_suite import _TrainCost
    from b3core.suites.pytest_plugin import extra_info

    contended = TelemetrySummary(
        0.05, 1.0, {}, {}, {"cpu": Energy(9.0, 0.9, "RAPL"), "gpu": Energy(5.0, 0.5, "counter")},
        {}, contention=("the hypervisor stole 9% of CPU time",),
    )  # fmt: skip
    result = measure(StepSpec("simple_cnn", 4, device=CPU), Timing(repeats=2))
    result = dataclasses.replace(result, telemetry=contended)
    bench = _TrainCost()
    bench.result = result
    assert bench.track_contended("simple_cnn", 4, "fp32") == 1.0
    assert bench.track_joules_per_sample("simple_cnn", 4, "fp32") == 0.5  # the GPU's first
    info = extra_info(result)
    assert info["contended"] is True
    assert extra_info(dataclasses.replace(result, telemetry=None))["contended"] is None
    assert "contended: the hypervisor stole 9% of CPU time" in info["warnings"]


def test_a_sweeps_passes_merge_into_one_summary():
    def record(seconds, steal, joules, per_sample, contended):
        return TelemetrySummary.from_dict({
            "interval_s": 0.05, "seconds": seconds, "samples": {"cpu": 10},
            "signals": {"cpu.load_average_1min": {"min": steal, "median": steal, "max": steal}},
            "energy": {"cpu": {"joules": joules, "j_per_sample": per_sample, "method": "RAPL"}},
            "unavailable": {}, "warnings": [], "cpu": {"steal_share": steal,
            "outside_load_cores": 0.0}, "contended": contended,
            "contention": ["the hypervisor stole 20% of CPU time"] if contended else [],
        })  # fmt: skip

    merged = TelemetrySummary.merged(
        [record(1.0, 0.0, 10.0, 0.1, False), record(3.0, 0.2, 30.0, 0.3, True)]
    )
    assert merged.seconds == 4.0 and merged.passes == 2 and merged.to_dict()["passes"] == 2
    assert merged.cpu.steal_share == pytest.approx(0.15)  # weighted by time
    assert merged.signals["cpu.load_average_1min"] == SignalRange(0.0, 0.1, 0.2)
    assert merged.energy["cpu"].joules == 40.0
    assert merged.energy["cpu"].j_per_sample == pytest.approx(40.0 / 200)  # 100 + 100
    assert merged.contended and merged.contention == ("the hypervisor stole 20% of CPU time",)
    assert TelemetrySummary.merged([None]) is None


def test_discarding_throttled_blocks_drops_those_and_counts_them():
    from b3core.measuring.runner import _drop_throttled

    throttled_spans = {(1.0, 2.0), (3.0, 4.0)}
    sampler = SimpleNamespace(throttled_during=lambda a, b: (a, b) in throttled_spans)
    spans = [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)]
    times, rank_times, dropped = _drop_throttled(sampler, spans, [0.1, 0.5, 0.2, 0.6], None)
    assert times == [0.1, 0.2] and dropped == 2 and rank_times is None
    everything = SimpleNamespace(throttled_during=lambda a, b: True)
    assert _drop_throttled(everything, spans, [1, 2, 3, 4], None) == ([1, 2, 3, 4], None, 0)


def test_the_runner_drops_throttled_blocks_and_charges_energy_to_every_timed_sample(monkeypatch):
    """--discard-throttled through measure(), with a sampler that reports the first block
    throttled: three of four blocks are kept, and energy per sample divides the energy of all
    four blocks (the dropped one drew power too) by all their samples."""
    import contextlib

    from b3core.measuring import runner

    calls = {}

    class Sampler:
        def __init__(self):
            self.first = None

        def throttled_during(self, start, end):
            self.first = self.first if self.first is not None else start
            return start == self.first

        def summary(self, processed, discarded):
            calls.update(processed=processed, discarded=discarded)
            return TelemetrySummary(0.05, 1.0, {}, {}, {}, {},
                                    discarded_throttled_blocks=discarded)  # fmt: skip

    monkeypatch.setattr(runner, "require_throttle_readings", lambda device: None)
    monkeypatch.setattr(runner, "telemetry_sampler", lambda d, t: contextlib.nullcontext(Sampler()))
    timing = Timing(repeats=4, block_steps=2, discard_throttled=True)
    result = measure(StepSpec("simple_cnn", 8, device=CPU), timing)
    assert result.measurement.time.n == 3 and calls == {"processed": 8 * 2 * 4, "discarded": 1}
    assert any("1 timed sample(s) taken while the GPU throttled were discarded" in w
               for w in result.warnings)  # fmt: skip
