"""The command line: output for good input, one line and exit 2 for bad input."""

import json
import subprocess
import sys

import pytest

from b3core.cli import main


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
        (["run", "--num_devices", "4"], "not supported"),
        (["models", "zzz*"], "no model matches"),
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


def test_step_prints_mean_and_sd_and_writes_json(capsys, tmp_path):
    path = tmp_path / "step.json"
    code, out, _ = run_cli(
        capsys, "step --model simple_cnn --batch-size 8 --device cpu --repeats 3 --json", str(path)
    )
    assert code == 0
    assert "step time" in out and "±" in out and "samples/s" in out
    payload = json.loads(path.read_text())
    assert len(payload["result"]["measurement"]["times_s"]) == 3
    assert payload["machine"]["torch"] and payload["machine"]["slug"]


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
    assert payload["result"]["config"]["precision"] == "bf16"
    assert payload["result"]["runs"][0]["train"]["samples"] == 64


def test_run_dashed_flags_and_repeats(capsys):
    code, out, _ = run_cli(
        capsys,
        "run --num-epochs 1 --batch-size 16 --model simple_cnn",
        "--train-size 64 --device cpu --repeats 2",
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
