"""The command line: output for good input, one line and exit 2 for bad input."""

import json
import subprocess
import sys

import pytest

from b3core.cli import main

pytestmark = pytest.mark.untimed  # its checks hold at any speed (a ~1 ms step blocks up either way)


def words(*parts):
    """'step --batch-size 8', '--json', path -> one argv list (strings with spaces are split)."""
    return [w for part in parts for w in (part.split() if " " in part else [part])]


def run_cli(capsys, *argv):
    code = main(words(*argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_cli_exit(capsys, *argv):
    """argparse errors leave through SystemExit."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["step", "--batch-size", "0"], "positive integer"),
        (["step", "--batch-size", "-3"], "positive integer"),
        (["step", "--batch-size", "2.5"], "positive integer"),
        (["step", "--batch-size", "4", "--model", "resnet"], "unknown model"),
        (["step", "--batch-size", "4", "--accumulation-steps", "0"], "positive integer"),
        (["step", "--batch-size", "4", "--repeats", "0"], "positive integer"),
        (["step", "--batch-size", "4", "--device", "cuda"], "no CUDA device"),
        (["step", "--batch-size", "4", "--device", "quantum"], "unknown device"),
        (["step", "--batch-size", "4", "--device", "cpu", "--precision", "fp16"], "not supported"),
        (["run", "--dataset", "cifar10", "--data-dir", "/no/such/dir"], "does not exist"),
        (["run", "--batch_size", "0"], "positive integer"),
        (["run", "--mixed_precision", "maybe"], "true or false"),
        (["run", "--strategy", "fsdp"], "invalid choice"),
        (["run", "--warmup", "1", "--model", "simple_cnn"], "warm-up"),
        (["step", "--batch-size", "4", "--clock", "sundial"], "invalid choice"),
        (["step", "--batch-size", "4", "--peak-tflops", "0"], "must be positive"),
        (["step", "--batch-size", "4", "--warmup", "1"], "warm-up must be at least 2"),
        (["step", "--batch-size", "4", "--clock", "per-step", "--block-steps", "3"], "blocked"),
        (["step", "--batch-size", "4", "--lr", "fast"], "must be a number"),
        (["models", "zzz*"], "no model matches"),
        (["sweep", "--batch-sizes", "4", "--inference"], "--inference is now --with-inference"),
        (["run", "--repeats", "2"], "--repeats is now --runs"),
        (["compare", "A", "B", "--min-epochs", "3"], "--min-epochs is now --min-rounds"),
        (["run", "--strategy", "none", "--num-devices", "2"], "runs one process"),
        (["sweep", "--batch-sizes", "1-100000", "--device", "cpu"], "more than 1000"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, fragment):
    if "cuda" in argv:
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    code, out, err = run_cli_exit(capsys, *argv)
    assert code == 2
    assert fragment in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_console_script_prints_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "b3core.cli", "step", "--batch-size", "4", "--model", "resnet_18"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith(
        "b3 step: error: unknown model 'resnet_18'; did you mean resnet18"
    )
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("clock", ["blocked", "per-step"])
def test_step_json_states_throughput_as_total_samples_over_total_time(capsys, tmp_path, clock):
    path = tmp_path / "step.json"
    code, out, _ = run_cli(
        capsys,
        f"step --model simple_cnn --batch-size 8 --accumulation-steps 2 --device cpu "
        f"--repeats 4 --clock {clock} --json",
        str(path),
    )
    assert code == 0
    assert "step time" in out and "±" in out and "samples/s" in out and clock in out
    payload = json.loads(path.read_text())
    result = payload["result"]
    raw = result["measurement"]
    assert result["clock"] == clock and isinstance(result["skipped_steps"], int)
    assert len(raw["times_s"]) == 4
    assert (raw["steps_per_sample"] > 1) == (clock == "blocked")  # ~1 ms steps block up
    samples = 16 * raw["steps_per_sample"] * 4
    throughput = result["throughput"]
    assert throughput["samples_per_s"] == pytest.approx(samples / sum(raw["times_s"]))
    low, high = throughput["ci95"]
    assert low <= throughput["samples_per_s"] <= high
    assert payload["machine"]["torch"] and payload["machine"]["slug"]


def test_step_out_of_memory_is_one_line_and_exit_1(capsys, monkeypatch):
    import torch

    from b3core.workloads.training import Trainer

    def out_of_memory(self, micro_batches):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(Trainer, "step", out_of_memory)
    code, out, err = run_cli(capsys, "step --batch-size 8 --device cpu")
    assert code == 1 and out == ""
    assert err.startswith("b3 step: error: simple_cnn/train/bs8/fp32: out of memory (CUDA out")
    assert len(err.strip().splitlines()) == 1


def test_step_options_are_the_spec_fields(capsys):
    """Every StepSpec and Timing field is an option of b3 step, declared once, in the spec."""
    import dataclasses

    from b3core.cli import build_parser
    from b3core.cli.options import spec_from_args, timing_from_args
    from b3core.spec import StepSpec, Timing

    argv = (
        "step --model resnet18 --batch_size 4 --precision bf16 --accumulation-steps 3 "
        "--inference --image-size 64 --num-classes 7 --optimizer sgd --learning_rate 0.1 "
        "--channels-last --compile --no-cudnn-benchmark --device cpu --repeats 3 --warmup 4 "
        "--clock blocked --block-steps 2 --input-dtype int64 --vocab-size 50 --loss m:loss "
        "--train-step m:step"
    )
    args = build_parser().parse_args(argv.split()[0:])
    spec, timing = spec_from_args(args), timing_from_args(args)
    assert spec == StepSpec(
        "resnet18", 4, "bf16", 3, "inference", 64, None, 7, "sgd", 0.1, True, "none", True, False,
        "cpu", None, "int64", 50, "m:loss", "m:step",
    )  # fmt: skip
    shaped = build_parser().parse_args("step --batch-size 4 --input-shape 3X8*8".split())
    assert spec_from_args(shaped).input_shape == "3x8x8"
    sequences = build_parser().parse_args("step --batch-size 4 --seq-len 32".split())
    assert spec_from_args(sequences).seq_len == 32
    assert timing == Timing(3, 4, "blocked", 2)
    defaults = spec_from_args(build_parser().parse_args("step --batch-size 4".split()))
    for field in dataclasses.fields(StepSpec):
        if field.default is not dataclasses.MISSING and field.name != "device":
            assert getattr(defaults, field.name) == field.default, field.name


def test_step_inference(capsys):
    code, out, _ = run_cli(
        capsys, "step --model simple_cnn --batch-size 8 --device cpu --repeats 3 --inference"
    )
    assert code == 0 and "simple_cnn/inference/bs8" in out


def test_run_accepts_b3s_flags_verbatim(capsys, tmp_path):
    code, out, _ = run_cli(
        capsys,
        "run --num_epochs 1 --batch_size 16 --mixed_precision true --model simple_cnn",
        "--train_size 64 --accelerator cpu --random_seed 1 --output_path",
        str(tmp_path),
    )
    assert code == 0
    assert "mixed precision: bf16" in out  # the best mixed precision on CPU, said aloud
    payload = json.loads((tmp_path / "b3-run.json").read_text())
    assert payload["result"]["config"]["step"]["precision"] == "bf16"
    assert payload["result"]["runs"][0]["train"]["samples"] == 64


def test_run_dashed_flags_and_runs(capsys):
    code, out, _ = run_cli(
        capsys,
        "run --num-epochs 1 --batch-size 16 --model simple_cnn",
        "--train-size 64 --device cpu --runs 2",
    )
    assert code == 0
    assert "±" in out and "train samples/s" in out


def test_models_lists_parameter_counts(capsys):
    code, out, _ = run_cli(capsys, "models", "simple*")
    assert code == 0 and "simple_cnn" in out and "41,418" in out and "3x32x32" in out


def test_machine_prints_the_slug(capsys):
    import re

    import torch

    code, out, _ = run_cli(capsys, "machine")
    slug = out.strip()
    assert code == 0 and re.fullmatch(r"[a-z0-9-]+", slug)
    if not torch.cuda.is_available():
        assert slug.endswith("-cpu")


def test_every_option_of_every_command_is_read():
    """No command offers an option that it does not read: each option's value is read by name
    in its command's module, or is a field of a record (StepSpec, Timing, or any record built
    from the command's options) that the command builds from them."""
    import argparse
    import dataclasses
    import importlib
    import inspect
    import re

    from b3core.cli import build_parser
    from b3core.spec.step import StepSpec, Timing

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    launch_source = inspect.getsource(importlib.import_module("b3core.cli.launch"))
    unread = []
    for name, command in commands.choices.items():
        module = inspect.getmodule(command.get_default("func"))
        source = inspect.getsource(module) + launch_source
        records = []
        if "spec_from_args" in source:
            records.append(StepSpec)
        if "timing_from_args" in source:
            records.append(Timing)
        built = re.findall(r"(\w+)\.__dataclass_fields__", source)
        built += re.findall(r"record_args\((\w+), args", source)
        for record in built:
            imported = re.search(rf"from ([\w.]+) import (\([^)]*|[^\n]*)\b{record}\b", source)
            records.append(getattr(importlib.import_module(imported[1]), record))
        fields = {f.name for record in records for f in dataclasses.fields(record)}
        for action in command._actions:
            dest = action.dest
            if dest in ("help", "traceback", argparse.SUPPRESS):
                continue
            if not (re.search(rf"args\.{dest}\b", source) or dest in fields):
                unread.append(f"b3 {name} {action.option_strings[0]}")
    assert unread == []


def test_a_finder_that_finds_nothing_that_fits_exits_with_the_out_of_memory_status(capsys):
    code, out, _ = run_cli(
        capsys, "find-max-batch --model simple_cnn --device cpu --memory-budget 1KiB"
    )
    assert code == 1 and "not even batch 1 fits" in out


def test_sigterm_ends_a_sweep_as_ctrl_c_does(tmp_path):
    """What timeout, CI cancellation and schedulers send: the units measured are kept, the
    reports are written from them, and the exit status is the interrupt's."""
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "b3core.cli", "sweep", "--model", "simple_cnn", "--device",
         "cpu", "--batch-sizes", "2-64", "--out", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    log = tmp_path / "sweep.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (
        not log.exists() or len(log.read_text().splitlines()) < 3
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert (tmp_path / "sweep.csv").exists() and (tmp_path / "sweep.json").exists()
