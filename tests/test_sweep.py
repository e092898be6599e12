import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from b3core.cli import main
from b3core.errors import B3Error
from b3core.spec import StepSpec, Timing
from b3core.studies.sweep import LOG_NAME, SweepLog, SweepPlan, aggregate, read_log, run_sweep
from tests.cli_helpers import b3_here

pytestmark = pytest.mark.untimed  # merging, resuming, records; blocks keep their order at any load

BASE = StepSpec("simple_cnn", 1, device="cpu")
MACHINE = {"slug": "test"}


def plan(repeats=4, clock="per-step", **kw):
    timing = Timing(repeats=repeats, clock=clock)
    defaults = {"base": BASE, "batch_sizes": (8, 16, 24), "timing": timing, "passes": 2}
    return SweepPlan(**{**defaults, **kw})


def test_units_are_interleaved_and_shuffled_per_pass():
    p = plan(batch_sizes=tuple(range(1, 21)))
    units = p.units()
    first, second = units[:20], units[20:]
    assert {u.batch_size for u in first} == {u.batch_size for u in second} == set(range(1, 21))
    assert all(u.pass_index == 0 for u in first) and all(u.pass_index == 1 for u in second)
    assert [u.batch_size for u in first] != sorted(u.batch_size for u in first)
    assert [u.batch_size for u in first] != [u.batch_size for u in second]
    assert [p.timing_in_pass(i).repeats for i in range(2)] == [2, 2]
    assert [plan(repeats=5).timing_in_pass(i).repeats for i in range(2)] == [3, 2]


def test_plan_rejects_bad_values():
    with pytest.raises(B3Error):
        plan(batch_sizes=())
    with pytest.raises(B3Error):
        plan(batch_sizes=(0, 4))
    with pytest.raises(B3Error):
        plan(repeats=1, passes=2)


def test_sweep_merges_passes_and_records_oom_then_goes_on(tmp_path):
    p = plan(batch_sizes=(4, 8, 4096), memory_budget=80 * 2**20, inference=True)
    log = SweepLog.open(tmp_path, p, resume=False, machine=MACHINE)
    result = run_sweep(p, log)
    train = {r.spec.batch_size: r for r in result.for_mode("train")}
    assert set(train) == {4, 8}
    assert all(r.measurement.time.n == 4 for r in train.values())  # 2 passes x 2 repeats
    assert all(r.telemetry.passes == 2 for r in train.values())  # each pass's telemetry kept
    # a size's FLOPs, counted in its first pass only, stay with the merged result
    _, units = read_log(tmp_path / LOG_NAME)
    counted = [r["result"]["flops_per_step"] for k, r in units.items() if "result" in r]
    assert sum(1 for flops in counted if flops) == len(counted) // 2
    assert train[8].flops_per_step == 2 * train[4].flops_per_step > 0
    assert train[8].peak is not None and train[8].mfu.samples_per_s > 0  # the MFU column's
    assert ("train", 4096) in result.failures and "budget" in result.failures[("train", 4096)]
    _, records = read_log(tmp_path / LOG_NAME)
    oom_units = [k for k, r in records.items() if "oom" in r and k[1] == 4096]
    assert len(oom_units) == 2  # recorded once per mode, not retried in pass 2
    assert result.for_mode("inference")
    # the alignment test's replicates are the passes, each pass's samples over its time
    rates = result.rates("train")
    assert set(rates) == {4, 8} and all(len(r) == 2 for r in rates.values())
    units = _unit_measurements(tmp_path, 4)
    expected = [m.samples_per_step * m.steps / sum(m.times) for m in units]
    assert rates[4] == pytest.approx(expected)


def test_every_pass_of_a_size_reuses_the_first_passes_block_length(tmp_path):
    """Merged passes keep total samples / total time exact only if their blocks are alike."""
    p = plan(batch_sizes=(2, 64), repeats=4, clock="blocked")
    result = run_sweep(p, SweepLog.open(tmp_path, p, resume=False, machine=MACHINE))
    for size in (2, 64):
        blocks = {m.steps_per_sample for m in _unit_measurements(tmp_path, size)}
        assert len(blocks) == 1
    merged = {r.spec.batch_size: r.measurement for r in result.for_mode("train")}
    assert merged[2].steps_per_sample > merged[64].steps_per_sample >= 1


def _unit_measurements(out, size):
    from b3core.measuring.result import StepResult

    _, records = read_log(out / LOG_NAME)
    units = sorted((k, r) for k, r in records.items() if k[:2] == ("train", size) and "result" in r)
    return [StepResult.from_dict(r["result"]).measurement for _, r in units]


def test_one_pass_is_too_few_to_test_alignment(tmp_path):
    from b3core.reports.sweep_report import alignment_verdicts

    p = plan(batch_sizes=(15, 16, 17), repeats=2, passes=1)
    result = run_sweep(p, SweepLog.open(tmp_path, p, resume=False, machine=MACHINE))
    assert "at least 2 passes" in alignment_verdicts(result, [])["power of 2"]


def test_resume_refuses_a_different_sweep_and_an_unasked_overwrite(tmp_path):
    SweepLog.open(tmp_path, plan(), resume=False, machine=MACHINE)
    with pytest.raises(B3Error, match="--resume"):
        SweepLog.open(tmp_path, plan(), resume=False, machine=MACHINE)
    with pytest.raises(B3Error, match="different sweep"):
        SweepLog.open(tmp_path, plan(batch_sizes=(8,)), resume=True, machine=MACHINE)
    with pytest.raises(B3Error, match="must not mix"):
        SweepLog.open(tmp_path, plan(), resume=True, machine={"slug": "other-h100"})


def test_corrupt_log_is_a_clear_error_but_a_cut_last_line_is_dropped(tmp_path):
    p = plan(batch_sizes=(8,))
    log = SweepLog.open(tmp_path, p, resume=False, machine=MACHINE)
    run_sweep(p, log)
    path = tmp_path / LOG_NAME
    text = path.read_text()
    path.write_text(text + '{"mode": "train", "batch_si')  # killed mid-write
    _, records = read_log(path)
    assert len(records) == 2
    path.write_text(text.replace('"result"', '"resalt"', 1))
    with pytest.raises(B3Error, match="corrupt"):
        read_log(path)
    path.write_text("garbage\n")
    with pytest.raises(B3Error, match="corrupt"):
        read_log(path)


def test_cli_sweep_writes_outputs_and_reports_alignment(tmp_path, capsys):
    out = tmp_path / "s"
    argv = "sweep --model simple_cnn --batch-sizes 15-17 --repeats 4 --clock per-step --device cpu"
    code = main([*argv.split(), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "Alignment" in printed and "power of 2" in printed and "Memory model" in printed
    for name in ("sweep.jsonl", "sweep.csv", "sweep.json", "sweep.png"):
        assert (out / name).stat().st_size > 0
    summary = json.loads((out / "sweep.json").read_text())
    assert len(summary["results"]) == 3 and summary["memory_fit"] is not None
    assert summary["verdict_powers_of_two"]


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["--batch-sizes", "64-8"], "inverted"),
        (["--batch-sizes", ""], "empty"),
        (["--batch-sizes", "0,8"], "positive"),
        (["--batch-sizes", "8", "--memory-budget", "lots"], "cannot parse memory size"),
    ],
)
def test_cli_sweep_bad_input(tmp_path, capsys, argv, fragment):
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--out", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and fragment in err and len(err.strip().splitlines()) == 1


def test_cli_resume_with_a_corrupt_log_exits_2(tmp_path, capsys):
    (tmp_path / LOG_NAME).write_text("{broken\n")
    code = main(
        ["sweep", "--batch-sizes", "8", "--device", "cpu", "--out", str(tmp_path), "--resume"]
    )
    assert code == 2 and "corrupt" in capsys.readouterr().err


def _log_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().split("\n")[1:] if line.strip()]


def test_a_killed_sweep_resumes_without_losing_or_repeating_results(tmp_path):
    out = tmp_path / "sweep"
    args = [
        sys.executable,
        *"-m b3core.cli sweep --model simple_cnn --batch-sizes 48-55".split(),
        *"--repeats 4 --passes 2 --clock per-step --device cpu --out".split(),
        str(out),
    ]
    total = 8 * 2
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / LOG_NAME
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if log.exists() and len(_log_lines(log)) >= 5:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _log_lines(log)
    assert 5 <= len(before) < total, "the sweep must be killed midway for this test to mean much"

    resumed = b3_here(*args[3:], "--resume")
    assert resumed.returncode == 0, resumed.stderr
    after = _log_lines(log)
    assert after[: len(before)] == before  # nothing measured before the kill was lost or redone
    keys = [(r["mode"], r["batch_size"], r["pass"]) for r in map(json.loads, after)]
    assert len(keys) == len(set(keys)) == total  # every unit once, none twice
    _, records = read_log(log)
    assert all(r.measurement.time.n == 4 for r in aggregate(records.values()).results)
    assert os.path.exists(out / "sweep.png")


@pytest.mark.parametrize(
    "argv,fragment",
    [
        ("--precision fp16", "fp16 is not supported on cpu"),
        ("--model resnet_18", "unknown model 'resnet_18'"),
        ("--model vit_b_16 --image-size 100", "multiple of 16"),
    ],
)
def test_cli_sweep_that_cannot_run_here_writes_nothing(tmp_path, capsys, argv, fragment):
    out = tmp_path / "never"
    args = ["sweep", "--batch-sizes", "8", "--device", "cpu", *argv.split(), "--out", str(out)]
    assert main(args) == 2
    assert fragment in capsys.readouterr().err
    assert not out.exists()


def test_a_sweep_log_of_b3_0_1_is_refused_in_one_line(capsys):
    """The committed CPU sweep in docs/results was written by b3 0.1."""
    old = Path(__file__).resolve().parents[1] / "docs" / "results" / "vm-cpu" / "b3-0.1" / "sweep"
    assert main(["advise", "--sweep", str(old)]) == 2
    err = capsys.readouterr().err
    assert "written by b3 0.1" in err and len(err.strip().splitlines()) == 1


def test_reports_are_written_once_at_the_end_not_between_units(tmp_path, monkeypatch, capsys):
    """Presenting (tables, alignment tests, plots) never runs between timed units."""
    import b3core.reports.sweep_report as sweep_report

    writes = []
    real = sweep_report.write_sweep_report
    monkeypatch.setattr(
        sweep_report, "write_sweep_report", lambda *a, **k: writes.append(1) or real(*a, **k)
    )
    argv = "sweep --batch-sizes 8,16 --repeats 4 --passes 2 --clock per-step --device cpu --out"
    assert main([*argv.split(), str(tmp_path / "s")]) == 0
    assert writes == [1]


def test_a_sweep_times_the_training_steps_phases_in_its_first_pass_only(tmp_path):
    timing = Timing(repeats=4, clock="per-step", telemetry=False, flops=False, phases=True)
    p = plan(batch_sizes=(4,), timing=timing, inference=True)
    result = run_sweep(p, SweepLog.open(tmp_path, p, resume=False, machine=MACHINE))
    (train,) = result.for_mode("train")
    assert set(train.phases.times) == {"forward", "backward", "optimizer"}
    assert result.for_mode("inference")[0].phases is None
    _, units = read_log(tmp_path / LOG_NAME)
    phased = [k for k, r in units.items() if r["result"].get("phases")]
    assert phased == [k for k in units if k[0] == "train" and k[2] == 0]
