import json

import pytest
import torch

from b3core.cli import main
from b3core.errors import B3Error
from b3core.spec import StepSpec
from b3core.spec.run import RunConfig
from b3core.studies.experiment import run_experiment
from b3core.workloads.training import Trainer

pytestmark = pytest.mark.untimed  # nothing here asserts on speed


def config(batch_size=32, **kw) -> RunConfig:
    step = StepSpec("simple_cnn", batch_size, device="cpu", accumulation_steps=kw.pop("acc", 1))
    return RunConfig(step=step, **kw)


def test_run_counts_the_samples_each_phase_processed():
    result = run_experiment(config(num_epochs=2, train_size=100), repeats=2)
    assert len(result.runs) == 2
    for run in result.runs:
        assert run.train.samples == 2 * 96  # drop_last, as B3
        assert run.inference.samples == 11 + 22  # validation + test, nothing dropped
        assert run.train.seconds > 0 and run.inference.seconds > 0
    pipeline = result.input_pipeline()
    assert pipeline["steps"] == 2 * 3  # 96 samples a epoch at batch 32
    step_s = sum(result.step.measurement.times) / result.step.measurement.steps
    assert pipeline["compute_s"] == pytest.approx(6 * step_s)
    mean_train = sum(r.train.seconds for r in result.runs) / 2
    assert pipeline["overhead_s"] == pytest.approx(mean_train - 6 * step_s)
    # throughput over runs is all samples over all time, not a mean of per-run rates
    total = sum(r.train.seconds for r in result.runs)
    assert result.throughput("train").samples_per_s == pytest.approx(2 * 192 / total)
    summary = result.summary()
    assert summary["train"]["seconds"]["n"] == 2
    assert summary["combined_seconds"]["mean"] == pytest.approx(
        sum(r.combined_seconds for r in result.runs) / 2
    )


def test_accumulation_counts_every_micro_batch():
    train = run_experiment(config(10, train_size=50, acc=2), step_baseline=False).runs[0].train
    assert (train.samples, train.steps) == (50, 3)  # windows of 2, 2 and 1 micro-batches


def test_config_rejects_bad_values():
    with pytest.raises(B3Error):
        config(num_epochs=0)
    with pytest.raises(B3Error, match="--data-dir"):
        config(dataset="cifar10")
    with pytest.raises(B3Error, match="warm-up"):
        config(warmup=1)
    with pytest.raises(B3Error, match="larger than"):
        run_experiment(config(500, train_size=100))


def test_inference_is_warmed_at_every_shape_it_will_see_before_its_clock(monkeypatch):
    """Validation 11 and test 22 images at batch 8: timed batches of 8, 3 | 8, 8, 6. Each shape
    (8, 3 and 6: cuDNN autotunes per shape) runs twice before the clock starts."""
    seen = []
    real_infer = Trainer.infer
    monkeypatch.setattr(
        Trainer, "infer", lambda self, x: seen.append(len(x)) or real_infer(self, x)
    )
    run_experiment(config(8, train_size=100), step_baseline=False)
    warm, timed = seen[:-5], seen[-5:]
    assert timed == [8, 3, 8, 8, 6]
    assert sorted(warm) == [3, 3, 6, 6, 8, 8]


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"),
    ],
)
def test_out_of_memory_mid_run_keeps_the_finished_runs(monkeypatch, tmp_path, capsys, error):
    """The second run fails in its 2nd timed step: one line, exit 1, the first run kept."""
    calls = []
    real_step = Trainer.step

    def failing_step(self, micro_batches):
        calls.append(1)
        if len(calls) == 2 + 3 + 2 + 2:  # run 1: 2 warm-up + 3 steps; run 2: 2 warm-up, then 2nd
            raise error
        return real_step(self, micro_batches)

    monkeypatch.setattr(Trainer, "step", failing_step)
    out = tmp_path / "run.json"
    argv = "run --model simple_cnn --batch-size 32 --train-size 100 --device cpu --runs 3"
    code = main([*argv.split(), "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert "simple_cnn" in captured.out and "train samples/s" in captured.out  # run 1's table
    err = captured.err.strip().splitlines()
    assert err[-1].startswith("b3 run: error: simple_cnn/train/bs32/fp32: out of memory")
    assert "finished run(s) are kept" in err[-1] and "Traceback" not in captured.err
    saved = json.loads(out.read_text())["result"]
    assert len(saved["runs"]) == 1 and "out of memory" in saved["failure"]
