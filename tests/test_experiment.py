import pytest

from b3core.errors import B3Error
from b3core.studies.experiment import RunConfig, run_experiment


def test_run_counts_the_samples_each_phase_processed():
    cfg = RunConfig(
        model="simple_cnn", batch_size=32, num_epochs=2, train_size=100, device="cpu", warmup=2
    )
    result = run_experiment(cfg, repeats=2)
    assert len(result.runs) == 2
    for run in result.runs:
        assert run.train.samples == 2 * 96  # drop_last, as B3
        assert run.inference.samples == 11 + 22  # validation + test, nothing dropped
        assert run.train.seconds > 0 and run.inference.seconds > 0
    pipeline = result.input_pipeline()
    assert pipeline["steps"] == 2 * 3  # 96 samples a epoch at batch 32
    step_s = result.step.measurement.time.median
    assert pipeline["compute_s"] == pytest.approx(6 * step_s)
    assert pipeline["overhead_s"] == pytest.approx(summary_mean_train(result) - 6 * step_s)
    summary = result.summary()
    assert summary["train"]["seconds"]["n"] == 2
    assert summary["combined_seconds"]["mean"] == pytest.approx(
        sum(r.combined_seconds for r in result.runs) / 2
    )


def summary_mean_train(result):
    return sum(r.train.seconds for r in result.runs) / len(result.runs)


def test_accumulation_counts_every_micro_batch():
    cfg = RunConfig(
        model="simple_cnn", batch_size=10, train_size=50, accumulation_steps=2, device="cpu"
    )
    train = run_experiment(cfg, step_baseline=False).runs[0].train
    assert (train.samples, train.steps) == (50, 3)  # windows of 2, 2 and 1 micro-batches


def test_config_rejects_bad_values():
    with pytest.raises(B3Error):
        RunConfig(batch_size=0)
    with pytest.raises(B3Error, match="--data-dir"):
        RunConfig(dataset="cifar10")
    with pytest.raises(B3Error, match="larger than"):
        run_experiment(RunConfig(model="simple_cnn", batch_size=500, train_size=100, device="cpu"))
