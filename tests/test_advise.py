import json

import numpy as np
import pytest

from b3core.cli import main
from b3core.measuring.result import PeakMemory, StepResult
from b3core.measuring.stats import Measurement
from b3core.spec import StepSpec
from b3core.studies.advise import LrRequest, advise
from b3core.studies.memory_model import fit_memory
from b3core.studies.sweep import SweepResult
from b3core.workloads.info import WorkloadInfo

pytestmark = pytest.mark.untimed  # nothing here asserts on speed


def sweep_with(
    rates: dict[int, float], batchnorm: bool = False, pass_noise: float | None = None
) -> SweepResult:
    """A sweep whose batch B runs at rates[B] samples/s, steadily; with `pass_noise`, five
    passes whose rates scatter by that much (relative SD) around it."""
    results = []
    for b, rate in rates.items():
        step = b / rate
        times = (step * 0.99, step, step * 1.01, step)
        results.append(
            StepResult(
                StepSpec("a_model", b, device="cpu"),
                Measurement(times, b),
                PeakMemory(1000 + 10 * b, None, "fake"),
                "cpu",
                workload=WorkloadInfo(1000, (3, 32, 32), 10, batchnorm),
            )
        )
    passes = {}
    if pass_noise is not None:
        rng = np.random.default_rng(0)
        passes = {
            ("train", b): list(r * np.exp(rng.normal(0, pass_noise, 5))) for b, r in rates.items()
        }
    return SweepResult(results=results, pass_rates=passes)


RATES = {16: 500.0, 32: 900.0, 64: 980.0, 128: 1000.0, 256: 1010.0}


def test_fastest_and_smallest_within_five_percent():
    advice = advise(sweep_with(RATES))
    assert advice.fastest_batch == 256
    assert advice.smallest_near_best == 64  # 980 >= 0.95 * 1010; 900 is not
    assert advice.largest_safe is None


def test_a_clear_lead_is_shown_with_its_interval():
    advice = advise(sweep_with(RATES, pass_noise=0.002))
    lead = advice.lead
    assert advice.fastest_batch == advice.chosen_batch == 256 and lead.runner_up == 128
    assert 1 < lead.ci_low < lead.ratio < lead.ci_high and not lead.within_noise
    assert lead.tie_break is None
    row = dict(advice.rows())["fastest batch (highest samples/s)"]
    assert "ahead of 128 by 1.1% (95% CI +0.8% to +1.3%" in row and "within the noise" not in row


def test_a_lead_within_the_noise_prefers_the_power_of_two():
    advice = advise(sweep_with({64: 980.0, 127: 1000.0, 128: 998.0}, pass_noise=0.03))
    assert advice.fastest_batch in (127, 128) and advice.lead.within_noise
    assert advice.chosen_batch == 128 and advice.lead.tie_break == "the power of two"
    assert (
        "within the noise, so 128 is chosen for the power of two"
        in dict(advice.rows())["fastest batch (highest samples/s)"]
    )
    assert advice.to_dict()["lead"]["tie_winner"] == 128


def test_a_tie_of_two_others_prefers_the_smaller_memory():
    advice = advise(sweep_with({96: 1000.0, 100: 1001.0}, pass_noise=0.03))
    assert advice.lead.within_noise and advice.lead.tie_break == "the smaller peak memory"
    assert advice.chosen_batch == 96  # the fake peak grows with the batch
    assert (
        advise(sweep_with({96: 1000.0, 100: 1001.0}, pass_noise=0.03), batch=100).chosen_batch
        == 100
    )


def test_largest_safe_batch_caps_the_choice():
    advice = advise(sweep_with(RATES), found_max=200, safety_margin=0.1)
    assert advice.largest_safe == 180
    assert advice.fastest_batch == 128  # 256 does not fit safely


def test_memory_model_predicts_the_safe_batch_when_no_search_ran():
    fit = fit_memory([16, 32], [1000 + 10 * 16, 1000 + 10 * 32])
    advice = advise(sweep_with(RATES), memory_fit=fit, memory_budget=1000 + 10 * 100)
    assert advice.largest_safe == 90 and "predicted" in advice.largest_safe_source
    assert "extrapolated" not in advice.largest_safe_source  # 100 is within 4x of 32
    far = advise(sweep_with(RATES), memory_fit=fit, memory_budget=1000 + 10 * 1000)
    assert "extrapolated 31x past the largest batch measured (32" in far.largest_safe_source


def test_learning_rate_and_accumulation_for_the_chosen_batch():
    advice = advise(
        sweep_with(RATES), batch=128, lr=LrRequest(5e-4, 128, "linear", 45_000), target_batch=1024
    )
    assert advice.accumulation_steps == 8 and advice.effective_batch == 1024
    assert advice.lr == pytest.approx(4e-3)  # scaled to the effective batch
    assert advice.warmup_steps == 220  # 5 epochs of 45,000 at 1024
    assert advice.accumulation_note is None  # simple_cnn has no BatchNorm
    sqrt = advise(sweep_with(RATES), batch=512, lr=LrRequest(5e-4, 128, "sqrt"))
    assert sqrt.lr == pytest.approx(1e-3)


def test_accumulation_with_batchnorm_says_it_is_not_a_true_large_batch():
    """Read from the recorded workload: advise builds no model."""
    advice = advise(sweep_with(RATES, batchnorm=True), batch=64, target_batch=512)
    assert "BatchNorm" in advice.accumulation_note and "512" in advice.accumulation_note


def test_cli_advise_from_a_real_sweep(tmp_path, capsys):
    out = tmp_path / "s"
    assert (
        main(
            [
                *"sweep --batch-sizes 8,16 --repeats 2 --passes 1 --clock per-step".split(),
                *"--device cpu".split(),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    code = main(
        [
            *"advise --sweep".split(),
            str(out),
            *"--base-lr 5e-4 --base-batch 8 --target-batch 64 --json".split(),
            str(tmp_path / "a.json"),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "fastest batch" in printed and "accumulation" in printed
    assert (tmp_path / "a.json").exists()


def test_cli_advise_errors(tmp_path, capsys):
    assert main(["advise", "--sweep", str(tmp_path)]) == 2
    assert "no sweep log" in capsys.readouterr().err


def test_cli_advise_refuses_a_find_max_file_of_another_setup(tmp_path, capsys):
    out = tmp_path / "s"
    argv = "sweep --batch-sizes 8,16 --repeats 2 --passes 1 --clock per-step --device cpu --out"
    assert main([*argv.split(), str(out)]) == 0
    other = tmp_path / "max.json"
    spec = {
        "model": "resnet18",
        "precision": "fp32",
        "image_size": None,
        "optimizer": "adam",
        "channels_last": False,
        "device": "cpu",
    }
    other.write_text(json.dumps({"max_batch": 64, "spec": spec}))
    capsys.readouterr()
    assert main(["advise", "--sweep", str(out), "--find-max", str(other)]) == 2
    assert "another setup" in capsys.readouterr().err
