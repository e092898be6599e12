import pytest

from b3core.spec import StepSpec
from b3core.studies.memory_model import analytic_fixed_memory, fit_memory, prediction_error

pytestmark = pytest.mark.untimed  # nothing here asserts on speed


def test_fit_recovers_an_exact_line_and_predicts_the_max():
    sizes = [8, 16, 32, 64]
    fit = fit_memory(sizes, [100_000 + 3_000 * b for b in sizes])
    assert fit.fixed_bytes == pytest.approx(100_000)
    assert fit.per_sample_bytes == pytest.approx(3_000)
    assert fit.r_squared == pytest.approx(1.0)
    assert fit.max_batch_for(400_000) == 100
    assert fit.max_batch_for(50_000) == 0


def test_fit_needs_two_sizes():
    with pytest.raises(ValueError):
        fit_memory([8, 8], [1, 2])


def test_analytic_fixed_part_counts_weights_gradients_and_optimizer_state():
    adam = analytic_fixed_memory(41_418, "adam")  # simple_cnn's parameters
    sgd = analytic_fixed_memory(41_418, "sgd")
    assert adam.parameters == 41_418
    assert adam.total_bytes == 41_418 * 16  # 4 weights + 4 grads + 8 for Adam's two moments
    assert sgd.total_bytes == 41_418 * 12


def test_prediction_error_is_relative_and_signed():
    assert prediction_error(110, 100) == pytest.approx(0.10)
    assert prediction_error(90, 100) == pytest.approx(-0.10)


def test_measured_fit_on_cpu_is_linear_and_near_the_analytic_size():
    """Real measurement: peaks of mobilenet_v3_small training steps grow linearly with the batch,
    and the intercept is in the range of weights + gradients + Adam state."""
    from b3core.studies.finder import fit_memory_model

    spec = StepSpec("mobilenet_v3_small", 8, image_size=64, device="cpu")
    fitted = fit_memory_model(spec, [8, 16, 32, 64], memory_budget=None)
    fit, analytic = fitted.fit, fitted.analytic.total_bytes
    assert fitted.analytic.parameters == 1_528_106  # mobilenet_v3_small with 10 classes
    assert fit.r_squared > 0.9
    assert fit.per_sample_bytes > 0
    # allocator slack and the workspace make the intercept noisy: a factor of 4 either way
    assert analytic / 4 < fit.fixed_bytes < analytic * 4


def test_the_fit_reports_its_residuals_and_flags_far_extrapolation():
    fit = fit_memory([10, 20, 40], [1_100, 2_000, 4_100])
    assert sum(fit.residuals) == pytest.approx(0, abs=1e-6) and fit.max_residual_share > 0.01
    exact = fit_memory([10, 20, 40], [1_000 + 100 * b for b in (10, 20, 40)])
    assert exact.max_residual_share == pytest.approx(0, abs=1e-9)
    assert fit.to_dict()["residual_bytes"] == list(fit.residuals)
    assert fit.extrapolation_note(160) is None  # 4x the largest size measured
    note = fit.extrapolation_note(400)
    assert note and "10x past the largest batch measured (40" in note
