"""Saved files say what they are ("format": "b3/<kind>/<n>"), and older ones load through their
kind's upgrade; a newer or a different kind is one line."""

import json

import pytest

from b3core.errors import B3Error
from b3core.spec import formats
from b3core.studies import log_file
from b3core.studies.converge import read_log as read_converge_log
from b3core.studies.sweep import read_log as read_sweep_log

pytestmark = pytest.mark.untimed  # nothing here asserts on speed


def test_every_kind_is_stamped_with_its_current_format():
    for kind, version in formats.CURRENT.items():
        payload = formats.stamped(kind, {"x": 1})
        assert payload == {"format": f"b3/{kind}/{version}", "x": 1}
        assert formats.upgraded(kind, payload, "f") == payload


def test_files_from_before_formats_are_upgraded_through_their_kind():
    """b3 0.3's find-max file (no format) reads as today's."""
    old = {"max_batch": 64, "spec": {"model": "simple_cnn"}}
    assert formats.upgraded("find-max", old, "f") == {"format": "b3/find-max/1", **old}


def test_result_records_of_every_b3_load_through_one_upgrade():
    """A result carries its format; b3 0.2-0.4's records (no format) read as they were; b3 0.1's
    (docs/results/vm-cpu/b3-0.1/run-127.json) get the per-step clock and their first call's
    time as the warm-up."""
    from pathlib import Path

    from b3core.measuring.result import StepResult

    repo = Path(__file__).resolve().parents[1]
    old = json.loads((repo / "docs/results/vm-cpu/b3-0.1/run-127.json").read_text())
    record = old["result"]["step"]
    assert "format" not in record and "clock" not in record["measurement"]
    loaded = StepResult.from_dict(record)
    assert loaded.measurement.clock == "per-step"
    assert loaded.first_call_s == record["first_call_s"] and loaded.warmup.steps == 0
    saved = loaded.to_dict()
    assert saved["format"] == "b3/result/1"
    unversioned = {k: v for k, v in saved.items() if k != "format"}  # as b3 0.4 wrote it
    assert StepResult.from_dict(unversioned) == StepResult.from_dict(saved) == loaded
    blocked = {**unversioned, "measurement": {**saved["measurement"], "clock": "blocked"}}
    assert StepResult.from_dict(blocked).measurement.clock == "blocked"  # not overwritten


def test_a_version_1_sweep_keeps_its_welch_alignment_apart():
    old = {"format": "b3/sweep/1", "results": [], "alignment": [{"diff": 3.0, "p_value": 0.2}]}
    assert formats.upgraded("sweep", old, "f") == {
        "format": "b3/sweep/2",
        "results": [],
        "alignment": [],
        "alignment_welch": [{"diff": 3.0, "p_value": 0.2}],
    }


@pytest.mark.parametrize(
    "payload,fragment",
    [
        ({"format": "b3/find-max/99"}, "newer b3"),
        ({"format": "b3/sweep/1"}, "is a b3 sweep file, not a find-max file"),
        ({"format": "pytest-benchmark"}, "unknown format"),
    ],
)
def test_a_newer_or_another_kind_is_one_line(payload, fragment):
    with pytest.raises(B3Error, match=fragment):
        formats.upgraded("find-max", payload, "f.json")


def test_the_logs_write_their_format_and_read_b3_0_3s(tmp_path):
    path = tmp_path / "sweep.jsonl"
    log_file.create(path, "sweep-log", {"plan": {"sizes": [8]}, "machine": {}})
    assert json.loads(path.read_text().splitlines()[0])["format"] == "b3/sweep-log/1"
    header, _ = read_sweep_log(path)
    assert header["plan"] == {"sizes": [8]}
    path.write_text(json.dumps({"b3_sweep": 2, "plan": {"sizes": [8]}, "machine": {}}) + "\n")
    header, _ = read_sweep_log(path)  # b3 0.3's header
    assert header["format"] == "b3/sweep-log/1" and "b3_sweep" not in header
    path.write_text(json.dumps({"b3_sweep": 1, "plan": {}}) + "\n")
    with pytest.raises(B3Error, match="written by b3 0.1"):
        read_sweep_log(path)
    converge = tmp_path / "converge.jsonl"
    converge.write_text(json.dumps({"b3_converge": 1, "study": {"a": 1}, "machine": {}}) + "\n")
    header, runs = read_converge_log(converge)
    assert header["study"] == {"a": 1} and runs == {}


def test_a_commands_json_says_its_format(tmp_path, capsys):
    from b3core.cli import main

    out = tmp_path / "step.json"
    assert main(["step", "--batch-size", "2", "--device", "cpu", "--repeats", "2",
                 "--no-telemetry", "--json", str(out)]) == 0  # fmt: skip
    assert json.loads(out.read_text())["format"] == "b3/step/1"
