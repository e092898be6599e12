"""The one definition of benchmark cases that pytest and asv both draw from."""

import itertools

import pytest

from b3core.errors import B3Error
from b3core.spec import StepSpec
from b3core.suites.cases import (
    CaseOptions,
    benchmark_cases,
    get_profile,
    unsupported_reason,
)
from b3core.workloads.models import get_model_spec, list_models

pytestmark = pytest.mark.untimed  # nothing here asserts on speed


def test_b3_profile_is_b3s_experiment():
    profile = get_profile("b3", "cpu")
    assert profile.models == ("mobilenet_v3_large",)
    assert profile.batch_sizes == (100, 127, 128, 129, 156, 511, 512, 513)
    assert profile.image_sizes == {}  # 224x224, the model's default
    assert profile.precisions == ("bf16",)  # fp16 AMP on CUDA; CPU's best mixed precision here


def test_quick_profile_is_small_and_around_powers_of_two():
    cases = benchmark_cases(CaseOptions(profile="quick", device="cpu"))
    assert {c.batch_size for c in cases} == {15, 16, 17, 31, 32, 33}
    assert {c.precision for c in cases} == {"fp32"}
    assert {c.accumulation_steps for c in cases if c.mode == "train"} == {1, 2}
    assert {c.accumulation_steps for c in cases if c.mode == "inference"} == {1}
    assert all((c.image_size or get_model_spec(c.model).image_size) <= 64 for c in cases)


def test_full_profile_covers_every_model_precision_and_accumulation():
    profile = get_profile("full", "cpu")
    assert set(profile.models) == set(list_models())
    assert set(profile.precisions) == {"fp32", "tf32", "fp16", "bf16"}
    assert profile.accumulation_steps == (1, 2, 4)
    assert {127, 128, 129, 511, 512, 513, 8, 504} <= set(profile.batch_sizes)


def test_overrides_narrow_a_profile():
    options = CaseOptions(
        profile="full",
        device="cpu",
        models="resnet18",
        batch_sizes="127-129",
        precisions="bf16",
        accumulation_steps="1",
    )
    cases = benchmark_cases(options, mode="train")
    assert [(c.model, c.batch_size, c.precision) for c in cases] == [
        ("resnet18", 127, "bf16"),
        ("resnet18", 128, "bf16"),
        ("resnet18", 129, "bf16"),
    ]


def test_environment_variables_fill_unset_options(monkeypatch):
    monkeypatch.setenv("B3_PROFILE", "b3")
    monkeypatch.setenv("B3_ROUNDS", "7")
    options = CaseOptions.from_env(models="simple_cnn")
    assert (options.profile, options.rounds, options.models) == ("b3", 7, "simple_cnn")
    monkeypatch.setenv("B3_ROUNDS", "many")
    with pytest.raises(B3Error, match="rounds"):
        CaseOptions.from_env()


@pytest.mark.parametrize(
    "options,fragment",
    [
        (CaseOptions(profile="huge"), "unknown profile"),
        (CaseOptions(models="resnet"), "resnet18"),
        (CaseOptions(precisions="fp8"), "precision"),
        (CaseOptions(batch_sizes="9-1"), "inverted"),
        (CaseOptions(accumulation_steps="0"), "accumulation"),
    ],
)
def test_bad_overrides_are_clear_errors(options, fragment):
    with pytest.raises(B3Error, match=fragment):
        benchmark_cases(options)


@pytest.mark.parametrize("profile", ["quick", "b3", "full"])
def test_asv_grid_and_pytest_cases_are_the_same_cases(profile, monkeypatch):
    """Every case that asv's classes set up (model x batch x precision) is the very StepSpec
    that the pytest suite times (accumulation 1), so the two suites cannot drift apart."""
    from b3core.suites import asv_suite

    set_up = {"train": set(), "inference": set()}

    def record(spec):
        set_up[spec.mode].add(spec)
        raise NotImplementedError  # asv's way to skip: nothing is built

    monkeypatch.setattr(asv_suite, "_ready_step", record)
    monkeypatch.setattr(asv_suite, "_runnable", record)
    classes = asv_suite.step_benchmarks(profile=profile, device="cpu")
    for suite in classes:
        for params in itertools.product(*suite.params):
            with pytest.raises(NotImplementedError):
                suite().setup(*params)
    options = CaseOptions(profile=profile, device="cpu")
    for mode, specs in set_up.items():
        pytest_cases = {c for c in benchmark_cases(options, mode=mode) if c.accumulation_steps == 1}
        assert specs == pytest_cases


def test_asv_suite_uses_the_shared_grid(monkeypatch):
    import importlib

    monkeypatch.setenv("B3_MODELS", "simple_cnn")
    monkeypatch.setenv("B3_BATCH_SIZES", "7,9")
    import benchmarks.asv_steps as asv_steps

    asv_steps = importlib.reload(asv_steps)
    for suite in (asv_steps.TrainStep, asv_steps.Inference, asv_steps.TrainCost):
        assert suite.params == [["simple_cnn"], [7, 9], ["fp32"]]
        assert suite.grid.device == "cpu"


def test_unsupported_precision_is_explained():
    assert "fp16 is not supported on cpu" in unsupported_reason(
        StepSpec("simple_cnn", 4, "fp16", device="cpu")
    )
    assert unsupported_reason(StepSpec("simple_cnn", 4, "bf16", device="cpu")) is None
