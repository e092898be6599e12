"""`b3 converge` and what it rests on: the study end to end on digits, the learning-rate rule
and warm-up at every update, regime adaptation's equal update counts, Ghost BatchNorm against
a reference computation, the gradient noise scale on a problem with a known answer, divergence,
resume, bad input, and `b3 advise --converge`."""

import json
import math

import pytest
import torch
from torch import nn

from b3core.errors import B3Error
from b3core.measuring.noise_scale import GradientProbe, NoiseScale
from b3core.spec.converge import ConvergeSpec
from b3core.spec.step import StepSpec
from b3core.studies import log_file
from b3core.studies.converge import Schedule, prepare_study, read_log, run_one, steps_per_epoch
from b3core.studies.converge_runs import ConvergeRun, CurvePoint
from b3core.workloads.ghost_bn import GhostBatchNorm, use_ghost_batch_norm
from b3core.workloads.training import train_step
from tests.cli_helpers import b3_here as b3

pytestmark = pytest.mark.untimed  # nothing here asserts on speed

CPU = torch.device("cpu")
TINY = ["--model", "small_bn_cnn", "--image-size", "8", "--device", "cpu"]
SIMPLE = ["--model", "simple_cnn", "--image-size", "8", "--device", "cpu"]  # no BatchNorm


def tiny_study(**settings):
    spec = ConvergeSpec(**{"batch_sizes": (16,), "max_epochs": 1.0, **settings})
    step = StepSpec("small_bn_cnn", 16, device="cpu", image_size=8, optimizer="sgd", lr=0.05)
    return (spec, *prepare_study(spec, step))


def curve_point(update: int, **fields) -> CurvePoint:
    at_batch_16 = {"samples": 16 * update, "epochs": update / 10, "seconds": update / 100}
    defaults = {"batch_size": 16, "lr": 0.1, "train_loss": 1.0, "val_accuracy": 0.5}
    return CurvePoint(update=update, **{**at_batch_16, **defaults, **fields})


def finished_run(curve: list[CurvePoint], at_target: CurvePoint | None, **fields) -> ConvergeRun:
    """A run at batch 16 that ended at its curve's last point."""
    measured = {"batch_size": 16, "seed": 0, "accumulation_steps": 1, "peak_lr": 0.1}
    measured |= {"updates": curve[-1].update, "noise_scale": None}
    return ConvergeRun.finished(curve=curve, at_target=at_target, **{**measured, **fields})


def test_the_study_on_digits_writes_its_table_and_reaches_a_modest_target(tmp_path):
    """The issue's interface: 2 sizes x 2 seeds, well under a minute on a CPU."""
    out = tmp_path / "study"
    proc = b3(
        "converge",
        "--dataset",
        "digits",
        "--model",
        "simple_cnn",
        "--batch-sizes",
        "16,64",
        "--target-accuracy",
        "0.8",
        "--seeds",
        "2",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("converge.csv", "converge.json", "converge.png", "converge.jsonl"):
        assert (out / name).stat().st_size > 0
    record = json.loads((out / "converge.json").read_text())
    runs = record["runs"]
    assert sorted((r["batch_size"], r["seed"]) for r in runs) == [
        (16, 0),
        (16, 1),
        (64, 0),
        (64, 1),
    ]
    assert all("steps_to_target" in r for r in runs)
    assert all(r["reached"] and r["steps_to_target"] > 0 for r in runs)
    for run in runs:  # the first evaluation at or above the target fixes steps to target
        hit = next(p for p in run["curve"] if p["val_accuracy"] >= 0.8)
        assert run["steps_to_target"] == hit["update"]
        assert run["samples_to_target"] == hit["samples"] == hit["update"] * run["batch_size"]
        assert run["seconds_to_target"] == hit["seconds"] > 0
    summary = {row["batch_size"]: row for row in record["summary"]}
    assert summary[16]["reached_fraction"] == 1.0 and summary[64]["seeds"] == 2
    steps16 = [r["steps_to_target"] for r in runs if r["batch_size"] == 16]
    assert summary[16]["steps_to_target"] == pytest.approx(sum(steps16) / 2)
    assert "steps to target" in proc.stdout and "train - val" in proc.stdout


def test_learning_rate_rules_and_warmup_at_every_update():
    spec = ConvergeSpec(batch_sizes=(16, 64), lr_rule="linear", warmup_epochs=2)
    schedule = Schedule(spec, 64, base_lr=0.1, train_size=1000)
    assert schedule.peak_lr == pytest.approx(0.4)
    assert schedule.warmup_updates == math.ceil(2 * 1000 / 64) == 32
    for update in range(40):
        expected = 0.1 + 0.3 * (update + 1) / 32 if update < 32 else 0.4
        assert schedule.lr_at(update, 0.0) == pytest.approx(expected)
    sqrt = Schedule(spec.replace(lr_rule="sqrt"), 64, base_lr=0.1, train_size=1000)
    assert sqrt.peak_lr == pytest.approx(0.2)
    assert Schedule(spec.replace(lr_rule="none"), 64, 0.1, 1000).warmup_updates == 0
    assert Schedule(spec, 16, 0.1, 1000).warmup_updates == 0  # the base batch: no warm-up
    decayed = Schedule(spec.replace(decay_epochs=(2.0, 4.0)), 64, 0.1, 1000)
    assert decayed.lr_at(100, 1.9) == pytest.approx(0.4)
    assert decayed.lr_at(100, 2.0) == pytest.approx(0.04)
    assert decayed.lr_at(100, 4.5) == pytest.approx(0.004)


def test_the_run_trains_at_the_scheduled_rate_at_every_update():
    """Evaluating after every update records the optimizer's rate each time."""
    spec, step, splits = tiny_study(
        batch_sizes=(16, 64), lr_rule="linear", warmup_epochs=0.5, evals_per_epoch=1000
    )
    run = run_one(spec, step, splits, 64, 0, CPU)
    schedule = Schedule(spec, 64, step.lr, len(splits.train))
    assert run.warmup_updates == schedule.warmup_updates > 2
    rates = [point.lr for point in run.curve]
    assert len(rates) == run.updates == steps_per_epoch(len(splits.train), 64)
    for update, rate in enumerate(rates):
        assert rate == pytest.approx(schedule.lr_at(update, 0.0))
    assert rates[-1] == pytest.approx(0.05 * 64 / 16)


def test_regime_adaptation_gives_equal_update_counts():
    spec, step, splits = tiny_study(batch_sizes=(16, 128))
    base = run_one(spec, step, splits, 16, 0, CPU)
    plain = run_one(spec, step, splits, 128, 0, CPU)
    adapted = run_one(spec.replace(regime_adaptation=True), step, splits, 128, 0, CPU)
    assert base.updates == steps_per_epoch(len(splits.train), 16)
    assert plain.updates == steps_per_epoch(len(splits.train), 128) < base.updates
    assert adapted.updates == base.updates == adapted.budget_updates
    assert adapted.epochs == pytest.approx(base.updates / plain.updates)


def test_a_growing_batch_replaces_the_rate_decay():
    spec, step, splits = tiny_study(
        batch_sizes=(16,), max_epochs=2.0, decay_epochs=(1.0,), decay_factor=0.25, grow_batch=True
    )
    run = run_one(spec, step, splits, 16, 0, CPU)
    batches = {point.batch_size for point in run.curve}
    assert batches == {16, 64} and run.final_batch_size == 64
    assert {point.lr for point in run.curve} == {0.05}


def test_ghost_batch_norm_matches_its_reference():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3, momentum=0.1)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    x = torch.randn(12, 3, 5, 5) * 2 + 1
    ghost = GhostBatchNorm(bn, virtual_batch=4)
    out = ghost(x)
    mean, var = torch.zeros(3), torch.ones(3)
    for chunk, got in zip(x.split(4), out.split(4)):
        mu = chunk.mean(dim=(0, 2, 3))
        biased = chunk.var(dim=(0, 2, 3), unbiased=False)
        expected = (chunk - mu[:, None, None]) / torch.sqrt(biased[:, None, None] + bn.eps)
        expected = expected * bn.weight[:, None, None] + bn.bias[:, None, None]
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        mean = 0.9 * mean + 0.1 * mu
        var = 0.9 * var + 0.1 * chunk.var(dim=(0, 2, 3), unbiased=True)
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
    ghost.eval()
    torch.testing.assert_close(ghost(x), bn(x))  # eval: the running statistics, as before
    with pytest.raises(B3Error, match="does not split"):
        ghost.train()(torch.randn(10, 3, 5, 5))


def test_ghost_batch_norm_swaps_every_batch_norm_of_any_model():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4 * 3 * 3)),
    )
    params = {id(p) for p in model.parameters()}
    assert use_ghost_batch_norm(model, 2) == 2
    assert isinstance(model[1], GhostBatchNorm) and isinstance(model[2][1], GhostBatchNorm)
    assert {id(p) for p in model.parameters()} == params  # the same parameters, trained on
    model(torch.randn(8, 3, 5, 5))


def test_the_noise_scale_recovers_a_known_answer():
    """Per-sample gradients mu + noise with covariance sigma^2 I in d dimensions: B_simple =
    d sigma^2 / |mu|^2 exactly."""
    g = torch.Generator().manual_seed(0)
    d, sigma, b_small, k = 200, 1.0, 8, 4
    mu = torch.full((d,), math.sqrt(2.0 / d))  # |mu|^2 = 2
    true = d * sigma**2 / 2.0  # 100
    noise = NoiseScale(decay=0.999)
    for _ in range(3000):
        samples = mu + sigma * torch.randn(b_small * k, d, generator=g)
        small = samples.view(k, b_small, d).mean(dim=1)
        small_sq = float(small.square().sum(dim=1).mean())
        big_sq = float(samples.mean(dim=0).square().sum())
        noise.update(small_sq, big_sq, b_small, b_small * k)
    assert noise.b_simple == pytest.approx(true, rel=0.05)


def test_the_probe_reads_each_micro_batch_gradient_and_the_window():
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    batches = [(torch.randn(4, 5), torch.randint(3, (4,))) for _ in range(3)]

    def squared_norm_of_gradient(inputs, targets) -> float:
        model.zero_grad()
        nn.functional.cross_entropy(model(inputs), targets).backward()
        return float(sum(p.grad.square().sum() for p in model.parameters()))

    small = [squared_norm_of_gradient(*batch) for batch in batches]
    big = squared_norm_of_gradient(
        torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    )
    model.zero_grad()
    probe = GradientProbe(model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    train_step(model, optimizer, batches, after_backward=probe)
    mean_small, window = probe.window()
    assert mean_small == pytest.approx(sum(small) / 3, rel=1e-4)
    assert window == pytest.approx(big, rel=1e-4)


def test_a_diverging_run_is_recorded_and_the_study_goes_on(tmp_path):
    """simple_cnn has no BatchNorm to hold its activations: at a rate of 1e30 its loss
    overflows at the second update."""
    out = tmp_path / "study"
    proc = b3(
        "converge",
        *SIMPLE,
        "--batch-sizes",
        "16,64",
        "--seeds",
        "1",
        "--max-epochs",
        "1",
        "--lr",
        "1e30",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    runs = json.loads((out / "converge.json").read_text())["runs"]
    assert len(runs) == 2
    for run in runs:
        assert run["diverged"] and run["diverged_at_step"] >= 1 and not run["reached"]
    assert "diverged" in proc.stdout


def test_a_study_resumes_and_adds_seeds(tmp_path):
    out = tmp_path / "study"
    args = ["converge", *TINY, "--batch-sizes", "16", "--max-epochs", "0.5", "--out", str(out)]
    assert b3(*args, "--seeds", "1").returncode == 0
    again = b3(*args, "--seeds", "1")
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = b3(*args, "--seeds", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    lines = (out / "converge.jsonl").read_text().splitlines()
    assert [json.loads(line)["seed"] for line in lines[1:]] == [0, 1]
    other = b3(*args, "--seeds", "2", "--resume", "--lr", "0.01")
    assert other.returncode == 2 and "different study" in other.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--batch-sizes", "16", "--target-accuracy", "1.5"], "fraction in (0, 1]"),
        (["--batch-sizes", ""], "empty batch size list"),
        (
            ["--batch-sizes", "16", "--dataset", "cifar10", "--data-dir", "/no/such"],
            "does not exist",
        ),
        (["--batch-sizes", "16", "--dataset", "imagefolder"], "give --data-dir"),
        (
            ["--batch-sizes", "16,24", "--ghost-batch", "16"],
            "does not divide the micro-batch of 24",
        ),
        (["--batch-sizes", "16", "--accumulation-steps", "3"], "does not split into 3"),
        (["--batch-sizes", "16", "--grow-batch"], "--decay-epochs"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, fragment):
    proc = b3("converge", *TINY, *args, "--out", str(tmp_path / "study"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and fragment in proc.stderr, proc.stderr
    assert not (tmp_path / "study").exists()


def test_advise_joins_steps_to_target_with_the_sweeps_time_per_update(tmp_path):
    """Batch 16 and 32 are swept; 64 is not, so it is predicted as 2 updates' worth of 32."""
    import pandas as pd

    sweep, study = tmp_path / "sweep", tmp_path / "study"
    swept = b3("sweep", *TINY, "--batch-sizes", "16,32", "--repeats", "2", "--out", str(sweep))
    assert swept.returncode == 0, swept.stderr
    studied = b3(
        "converge",
        *TINY,
        "--batch-sizes",
        "16,32,64",
        "--seeds",
        "1",
        "--max-epochs",
        "3",
        "--target-accuracy",
        "0.5",
        "--out",
        str(study),
    )
    assert studied.returncode == 0, studied.stderr
    out = tmp_path / "advice.json"
    proc = b3("advise", "--sweep", str(sweep), "--converge", str(study), "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    advice = json.loads(out.read_text())["time_to_target"]
    rate = pd.read_csv(sweep / "sweep.csv").set_index("batch")["samples_per_s"]
    runs = {r["batch_size"]: r for r in json.loads((study / "converge.json").read_text())["runs"]}
    predictions = {p["batch_size"]: p for p in advice["predictions"]}
    assert set(predictions) == {b for b, r in runs.items() if r["reached"]} == {16, 32, 64}
    for batch, p in predictions.items():
        micro = min(batch, 32)
        assert (p["micro_batch"], p["accumulation_steps"]) == (micro, batch // micro)
        assert p["measured"] == (batch <= 32)
        assert p["step_s"] == pytest.approx(batch / rate[micro], rel=1e-3)
        assert p["seconds"] == pytest.approx(runs[batch]["steps_to_target"] * p["step_s"])
    best = min(predictions.values(), key=lambda p: p["seconds"])
    assert advice["fastest"]["batch_size"] == best["batch_size"]
    assert f"fastest to target: batch {best['batch_size']}" in proc.stdout
    other = tmp_path / "other"
    assert (
        b3(
            "sweep",
            *SIMPLE,
            "--batch-sizes",
            "16",
            "--repeats",
            "2",
            "--out",
            str(other),
        ).returncode
        == 0
    )
    mismatch = b3("advise", "--sweep", str(other), "--converge", str(study))
    assert mismatch.returncode == 2 and "trained small_bn_cnn" in mismatch.stderr


def test_a_run_that_missed_the_target_is_counted_not_dropped():
    from b3core.reports.converge_report import display_frame, summary_frame

    def run(seed, steps, final):
        reached = steps is not None
        return ConvergeRun.from_dict({
            "batch_size": 32, "seed": seed, "accumulation_steps": 1, "reached": reached,
            "diverged": False, "peak_lr": 0.1, "updates": 100, "steps_to_target": steps,
            "epochs_to_target": steps and steps / 10, "samples_to_target": steps and steps * 32,
            "seconds_to_target": steps and steps / 100, "best_val_accuracy": final,
            "final_val_accuracy": final, "generalization_gap": 0.01, "noise_scale": None,
            "curve": [],
        })  # fmt: skip

    summary = summary_frame([run(0, 40, 0.95), run(1, 60, 0.93), run(2, None, 0.7)])
    row = summary.iloc[0]
    assert (row["seeds"], row["reached"], row["reached_fraction"]) == (3, 2, pytest.approx(2 / 3))
    assert row["steps_to_target"] == 50 and row["steps_to_target_sd"] == pytest.approx(14.142, 1e-3)
    assert row["final_val_accuracy"] == pytest.approx((0.95 + 0.93 + 0.7) / 3)
    assert display_frame(summary).iloc[0]["reached"] == "2/3"


def test_a_batch_that_runs_out_of_memory_is_recorded_and_the_study_goes_on(tmp_path, monkeypatch):
    from b3core.reports.converge_report import display_frame, summary_frame
    from b3core.studies import converge

    spec, step, splits = tiny_study(batch_sizes=(16, 32), max_epochs=0.2, seeds=1)
    real = converge.run_one

    def run_one(spec, step, splits, batch, seed, device):
        if batch == 32:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(spec, step, splits, batch, seed, device)

    monkeypatch.setattr(converge, "run_one", run_one)
    log = converge.ConvergeLog.open(tmp_path, spec, step, resume=False, machine={})
    converge.run_study(spec, step, splits, CPU, log)
    _, saved = converge.read_log(tmp_path / converge.LOG_NAME)
    assert set(saved) == {(16, 0), (32, 0)}
    assert saved[(32, 0)].out_of_memory.startswith("CUDA out of memory")
    assert not saved[(32, 0)].reached and "out_of_memory" not in saved[(16, 0)].to_dict()
    table = display_frame(summary_frame(list(saved.values())))
    assert table.set_index("batch").loc[32, "reached"] == "0/1 (1 out of memory)"


def test_an_image_folder_from_disk(tmp_path):
    """A user's own images in ImageFolder's layout (one folder per class), split 80/20."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for label, shade in (("dark", 40), ("light", 210)):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(20):
            pixels = (shade + torch.randint(-30, 30, (12, 12, 3), generator=g)).clamp(0, 255)
            Image.fromarray(pixels.to(torch.uint8).numpy()).save(
                tmp_path / "images" / label / f"{i}.png"
            )
    out = tmp_path / "study"
    proc = b3(
        "converge", *TINY, "--dataset", "imagefolder", "--data-dir", str(tmp_path / "images"),
        "--batch-sizes", "8", "--seeds", "1", "--max-epochs", "2", "--target-accuracy", "0.5",
        "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run = json.loads((out / "converge.json").read_text())["runs"][0]
    assert (run["train_size"], run["val_size"]) == (32, 8)
    assert json.loads((out / "converge.json").read_text())["step"]["num_classes"] == 2


def test_the_critical_batch_fitted_to_the_steps_and_the_noise_scale_at_target():
    import pandas as pd

    from b3core.reports.converge_report import critical_batch_fit

    batches = [16, 32, 64, 128, 256]
    steps = [100 * (1 + 50 / b) for b in batches]  # S_min 100, B_noise 50
    summary = pd.DataFrame({"batch_size": batches, "steps_to_target": steps})
    assert critical_batch_fit(summary) == pytest.approx(50)
    assert critical_batch_fit(summary.iloc[:2]) is None  # too few sizes to fit
    curve = [curve_point(5, noise_scale=40.0), curve_point(10, noise_scale=90.0)]
    assert finished_run(curve, at_target=curve[1]).noise_scale_at_target == 90.0
    assert finished_run(curve, at_target=None).noise_scale_at_target is None


def test_a_run_saves_and_loads_as_it_was_and_older_lines_load(tmp_path):
    curve = [curve_point(5, val_accuracy=0.6), curve_point(10, val_accuracy=0.9, noise_scale=7.0)]
    run = finished_run(curve, at_target=curve[1], final_train_accuracy=0.95, train_size=160)
    assert (run.reached, run.steps_to_target, run.best_val_accuracy) == (True, 10, 0.9)
    assert run.generalization_gap == pytest.approx(0.05)
    assert ConvergeRun.from_dict(run.to_dict()) == run
    assert ConvergeRun.from_dict(json.loads(json.dumps(run.to_dict()))) == run
    # lines as b3 wrote them before the records were typed: a finished run, one out of memory
    point = {"update": 4, "samples": 64, "epochs": 0.5, "seconds": 0.2, "batch_size": 16,
             "lr": 0.1, "train_loss": 0.7, "val_accuracy": 0.85, "noise_scale": None}  # fmt: skip
    finished = {
        "batch_size": 16, "seed": 1, "accumulation_steps": 1, "peak_lr": 0.1,
        "warmup_updates": 0, "budget_updates": None, "train_size": 128, "val_size": 32,
        "steps_to_target": 4, "epochs_to_target": 0.5, "samples_to_target": 64,
        "seconds_to_target": 0.2, "diverged_at_step": None, "updates": 8, "epochs": 1.0,
        "samples": 128, "train_seconds": 0.4, "final_batch_size": 16, "noise_scale": None,
        "noise_scale_steps": 0, "probe_seconds": 0.0, "reached": True, "diverged": False,
        "best_val_accuracy": 0.85, "final_val_accuracy": 0.85, "final_train_accuracy": 0.9,
        "generalization_gap": 0.05, "curve": [point],
    }  # fmt: skip
    out_of_memory = {
        "batch_size": 32, "seed": 1, "accumulation_steps": 1, "out_of_memory": "CUDA out of",
        "reached": False, "diverged": False, "peak_lr": math.nan, "updates": 0,
        **dict.fromkeys(("steps_to_target", "epochs_to_target", "samples_to_target")),
        **dict.fromkeys(("seconds_to_target", "best_val_accuracy", "final_val_accuracy")),
        **dict.fromkeys(("generalization_gap", "noise_scale")), "curve": [],
    }  # fmt: skip
    log = tmp_path / "converge.jsonl"
    log_file.create(log, "converge-log", {"study": {}, "machine": {}})
    log_file.append(log, finished)
    log_file.append(log, out_of_memory)
    _, runs = read_log(log)
    old = runs[(16, 1)]
    assert old.curve == (CurvePoint(**point),) and old.noise_scale_at_target is None
    assert (old.steps_to_target, old.final_train_accuracy, old.train_size) == (4, 0.9, 128)
    assert old.to_dict() == finished
    assert runs[(32, 1)].out_of_memory == "CUDA out of" and runs[(32, 1)].curve == ()
    saved = json.dumps(runs[(32, 1)].to_dict(), sort_keys=True)  # NaN != NaN: as JSON text
    assert saved == json.dumps(out_of_memory, sort_keys=True)
