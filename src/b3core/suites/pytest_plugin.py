"""b3's pytest plugin: the options, the case parametrization, machine info and the summary.

It extends pytest-benchmark only through its hooks and the `benchmark` fixture. Loaded through
the `pytest11` entry point; heavy imports wait until a hook needs them.
"""

from __future__ import annotations

import dataclasses

import pytest

DEFAULT_STORAGE = "file://./.benchmarks"
_RESULTS = pytest.StashKey[list]()
_NOTES = pytest.StashKey[list]()
_BUDGET_HELP = "cap each case's memory, e.g. 8G; cases over it are skipped (env B3_MEMORY_BUDGET)"


def pytest_addoption(parser: pytest.Parser) -> None:
    """--b3-NAME for each field of CaseOptions, with its help, default and variable there."""
    from b3core.spec.case_options import CaseOptions, option_help

    group = parser.getgroup("b3", "b3 benchmark cases")
    for f in dataclasses.fields(CaseOptions):
        flag = "--b3-" + f.name.replace("_", "-")
        group.addoption(flag, dest=f"b3_{f.name}", default=None, help=option_help(f))
    group.addoption("--b3-memory-budget", dest="b3_memory_budget", default=None, help=_BUDGET_HELP)


def case_options(config: pytest.Config):
    from b3core.spec.case_options import CaseOptions

    given = {f.name: config.getoption(f"b3_{f.name}") for f in dataclasses.fields(CaseOptions)}
    return CaseOptions.from_env(**given)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.stash[_RESULTS] = []
    config.stash[_NOTES] = []
    _check_options(config)
    # pytest-benchmark names its storage by OS and Python only; timings are comparable only on
    # the same accelerator, so the default storage gains the machine slug.
    if getattr(config.option, "benchmark_storage", None) == DEFAULT_STORAGE and _benchmarking(
        config
    ):
        from b3core.measuring.machine import machine_record

        config.option.benchmark_storage = f"{DEFAULT_STORAGE}/{machine_record()['slug']}"


def _check_options(config: pytest.Config) -> None:
    """Bad b3 options end the run before collection, as one line (pytest's exit code 4)."""
    import os

    from b3core.spec.case_options import ENV_PREFIX, CaseOptions

    given = [config.getoption(f"b3_{f.name}") for f in dataclasses.fields(CaseOptions)]
    given.append(config.getoption("b3_memory_budget"))
    if not any(v is not None for v in given) and not any(
        k.startswith(ENV_PREFIX) for k in os.environ
    ):
        return
    from b3core.errors import B3Error
    from b3core.suites.cases import benchmark_cases, profile_settings

    try:
        options = case_options(config)
        benchmark_cases(options)
        profile_settings(options)
    except B3Error as exc:
        raise pytest.UsageError(f"b3: {exc}") from None
    _memory_budget(config)


def _benchmarking(config: pytest.Config) -> bool:
    return bool(
        getattr(config.option, "benchmark_only", False)
        or getattr(config.option, "benchmark_autosave", False)
        or getattr(config.option, "benchmark_save", None)
        or getattr(config.option, "benchmark_compare", None) not in (None, False)
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for fixture, mode in (("b3_train_case", "train"), ("b3_inference_case", "inference")):
        if fixture in metafunc.fixturenames:
            from b3core.suites.cases import benchmark_cases

            cases = benchmark_cases(case_options(metafunc.config), mode=mode)
            metafunc.parametrize(fixture, cases, ids=[c.label for c in cases])


@pytest.fixture
def b3_settings(request: pytest.FixtureRequest):
    """The Timing of this run: rounds (timed samples), warm-up and clock."""
    from b3core.suites.cases import profile_settings

    return profile_settings(case_options(request.config))


@pytest.fixture
def b3_note(request: pytest.FixtureRequest):
    """`b3_note(text)`: a line for the b3 summary at the end of the run."""
    return request.config.stash[_NOTES].append


def _memory_budget(config: pytest.Config) -> int | None:
    import os

    from b3core.errors import B3Error
    from b3core.measuring.memory import parse_memory_size

    text = config.getoption("b3_memory_budget") or os.environ.get("B3_MEMORY_BUDGET")
    if not text:
        return None
    try:
        return parse_memory_size(text)
    except B3Error as exc:
        raise pytest.UsageError(f"b3: --b3-memory-budget: {exc}") from None


@pytest.fixture
def b3_bench(benchmark, b3_settings, request: pytest.FixtureRequest):
    """Time a StepSpec with pytest-benchmark: `b3_bench(spec)`. b3's runner builds and warms the
    step; pytest-benchmark times it. With the blocked clock each round is a block of k steps
    (pedantic's `iterations`) that ends in a device sync, and pytest-benchmark reports the mean
    step of each block. A case that does not fit is skipped with the reason, after its memory
    was released."""
    from b3core.errors import StepOutOfMemory
    from b3core.measuring.clocks import synced_every
    from b3core.measuring.runner import flop_figures, run_guarded, telemetry_sampler
    from b3core.measuring.stats import Measurement
    from b3core.suites.cases import unsupported_reason

    timing = b3_settings

    def run(spec):
        reason = unsupported_reason(spec)
        if reason:
            pytest.skip(reason)

        def timed(ready):
            k = ready.block_steps(timing)
            skipped = ready.skipped_updates
            with telemetry_sampler(ready.device, timing) as sampler:
                benchmark.pedantic(
                    synced_every(ready.call, ready.device, k), rounds=timing.repeats, iterations=k
                )
            samples = spec.samples_per_step * k * timing.repeats
            telemetry = sampler.summary(samples) if sampler is not None else None
            return k, ready.skipped_updates - skipped, telemetry, flop_figures(ready, timing)

        try:
            guarded = run_guarded(
                spec, timed, warmup=timing.warmup, memory_budget=_memory_budget(request.config)
            )
        except StepOutOfMemory as oom:
            pytest.skip(f"does not fit: {oom.reason}")
        if benchmark.disabled:
            return None
        k, skipped, telemetry, flops = guarded.value
        # pytest-benchmark keeps each round's time over its iterations: back to block times
        blocks = tuple(t * k for t in benchmark.stats.stats.data)
        measured = Measurement(blocks, spec.samples_per_step, k, timing.clock)
        result = dataclasses.replace(
            guarded.result(spec, measured, skipped), telemetry=telemetry, **flops
        )
        benchmark.extra_info.update(extra_info(result))
        request.config.stash[_RESULTS].append(result)
        return result

    return run


def extra_info(result) -> dict:
    """What b3 adds to each pytest-benchmark record: the whole result (raw times included, so
    that `b3 report` rebuilds it), and its headline figures for people reading the JSON."""
    m, spec = result.measurement, result.spec
    return {
        "b3_result": result.to_dict(),
        "b3_label": spec.label,
        "clock": m.clock,
        "steps_per_round": m.steps_per_sample,
        "samples_per_s": m.throughput.samples_per_s,
        "samples_per_s_ci95": list(m.throughput.ci95),
        "effective_batch_size": spec.samples_per_step,
        "precision": spec.precision,
        "accumulation_steps": spec.accumulation_steps,
        "skipped_steps": result.skipped_steps,
        "peak_memory_bytes": result.memory.peak_bytes,
        "device_name": result.device_name,
        "model_identity": result.workload.identity if result.workload else None,
        "warnings": result.warnings,
        "contended": result.contended if result.telemetry else None,  # None: not sampled
        "flops_per_step": result.flops_per_step,
        "mfu": result.mfu.samples_per_s if result.mfu else None,
        "mfu_ci95": list(result.mfu.ci95) if result.mfu else None,
    }


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    from b3core.measuring.machine import machine_record

    record = machine_record()
    machine_info["b3"] = record
    machine_info["b3_slug"] = record["slug"]
    machine_info["gpu"] = record["gpu"]
    machine_info["gpu_count"] = record["gpu_count"]
    machine_info["gpus"] = record["gpus"]
    for key in ("driver", "cuda", "cudnn", "torch", "torchvision"):
        machine_info[key] = record[key]


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    results, notes = config.stash.get(_RESULTS, []), config.stash.get(_NOTES, [])
    if not results and not notes:
        return
    from b3core.reports.tables import QUARTILE_NOTE, step_rows, to_text

    terminalreporter.write_sep(
        "=", "b3 summary (step time mean ± SD; samples/s = total samples / total time, 95% CI)"
    )
    if results:
        terminalreporter.write_line(to_text(step_rows(results)))
        terminalreporter.write_line(QUARTILE_NOTE)
    for note in notes:
        terminalreporter.write_line(note)
