"""A user's own model, loss and step: named by import path, entry point or timm/NAME, each
resolved to what it eats, built, timed, recorded with its identity, and each bad input one line.
"""

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from b3core.cli import main
from b3core.errors import B3Error
from b3core.measuring import runner
from b3core.measuring.runner import measure
from b3core.spec.step import StepSpec, Timing
from b3core.workloads import model_sources
from b3core.workloads.build import build_workload, resolve
from b3core.workloads.models import create_model, get_model_spec, list_models
from tests.cli_helpers import b3

pytestmark = pytest.mark.untimed  # nothing here asserts on speed

CPU = torch.device("cpu")
QUICK = Timing(repeats=2, block_steps=1)
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my_project"

NETS = """
from torch import nn
from b3core import model_inputs

CALLS = []

def image(num_classes=7, image_size=12):
    CALLS.append(("image", num_classes, image_size))
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * image_size * image_size, num_classes))

def classes_only(num_classes):
    CALLS.append(("classes_only", num_classes))
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

@model_inputs(input_shape=(20,), num_classes=3)
def mlp(num_classes, input_shape):
    return nn.Linear(input_shape[0], num_classes)

def text(num_classes, vocab_size):
    return nn.Sequential(nn.EmbeddingBag(vocab_size, 8), nn.Linear(8, num_classes))
text.b3_input_shape, text.b3_input_dtype, text.b3_vocab_size = "6", "int64", 50

def not_a_module():
    return "a string"

def broken_factory():
    raise ValueError("the factory is broken")

LOSSES = []

def counted_loss(outputs, targets):
    LOSSES.append(outputs.shape)
    return nn.functional.cross_entropy(outputs, targets)

STEPS = []

def my_step(model, batch, optimizer):
    inputs, targets = batch
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(inputs), targets)
    loss.backward()
    optimizer.step()
    STEPS.append(len(inputs))
    return loss

def stepless(model, inputs, targets):
    STEPS.append(len(inputs))
    nn.functional.cross_entropy(model(inputs), targets).backward()

def odd_step(model, x, y):
    pass
"""


@pytest.fixture
def nets(tmp_path, monkeypatch):
    """A throwaway module of factories, losses and steps on the path; its import name."""
    name = f"user_nets_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_a_factory_gets_only_the_arguments_it_declares_and_its_own_defaults(nets):
    image = get_model_spec(f"{nets}:image")
    assert (image.input_shape, image.num_classes, image.origin) == ((3, 12, 12), 7, "import path")
    create_model(f"{nets}:image", image_size=16)
    create_model(f"{nets}:classes_only", num_classes=5)
    calls = sys.modules[nets].CALLS
    assert calls == [("image", 7, 16), ("classes_only", 5)]


def test_a_factory_declares_its_input_with_the_decorator_or_attributes(nets):
    mlp, text = get_model_spec(f"{nets}:mlp"), get_model_spec(f"{nets}:text")
    assert (mlp.input_shape, mlp.num_classes, mlp.input_dtype) == ((20,), 3, "float32")
    assert (text.input_shape, text.input_dtype, text.vocab_size) == ((6,), "int64", 50)
    workload = build_workload(resolve(StepSpec(f"{nets}:text", 4, device="cpu")))
    assert workload.info.input_dtype == "int64" and workload.info.input_shape == (6,)


@pytest.mark.parametrize(
    "spec,shape",
    [
        (dict(model=":image", input_shape="3x8x8"), (3, 8, 8)),
        (dict(model=":image", image_size=10), (3, 10, 10)),
        (dict(model=":mlp", input_shape="32"), (32,)),
        (dict(model=":text", input_shape="9", vocab_size=11), (9,)),
    ],
)
def test_the_users_input_shape_is_what_the_step_is_timed_on(nets, spec, shape):
    spec = StepSpec(**{**spec, "model": nets + spec["model"]}, batch_size=3, device="cpu")
    result = measure(spec, QUICK)
    assert result.workload.input_shape == shape
    assert result.workload.origin == "import path" and result.workload.package == nets


def test_the_models_identity_survives_the_saved_result(nets):
    from b3core.measuring.result import StepResult

    result = measure(StepSpec(f"{nets}:text", 2, device="cpu", vocab_size=7), QUICK)
    loaded = StepResult.from_dict(json.loads(json.dumps(result.to_dict()))).workload
    assert loaded == result.workload
    assert (loaded.origin, loaded.package, loaded.input_dtype) == ("import path", nets, "int64")


def test_a_custom_loss_is_the_loss_that_is_trained(nets):
    measure(StepSpec(f"{nets}:mlp", 4, device="cpu", loss=f"{nets}:counted_loss"), QUICK)
    assert sys.modules[nets].LOSSES and sys.modules[nets].LOSSES[0] == (4, 3)


def test_a_custom_step_replaces_b3s_and_b3_still_warms_and_times_it(nets, monkeypatch):
    from b3core.workloads import training

    monkeypatch.setattr(training, "train_step", lambda *a, **k: pytest.fail("b3's step ran"))
    result = measure(StepSpec(f"{nets}:mlp", 5, device="cpu", train_step=f"{nets}:my_step"), QUICK)
    steps = sys.modules[nets].STEPS
    # the warm-up, the timed steps, and one more in which the FLOPs are counted
    assert len(steps) == result.warmup.steps + result.measurement.steps + 1 and set(steps) == {5}
    assert result.warmup.settled and result.skipped_steps == 0


def test_a_custom_step_without_the_optimizer_still_settles(nets):
    result = measure(StepSpec(f"{nets}:mlp", 2, device="cpu", train_step=f"{nets}:stepless"), QUICK)
    # two warm-up steps, and those after the CPU memory profiler stopped
    assert result.warmup.settled and result.warmup.steps == 2 + runner.STEPS_AFTER_PROFILER


@pytest.mark.parametrize(
    "changes,fragment",
    [
        (dict(accumulation_steps=2), "must take micro_batches"),
        (dict(train_step=":odd_step"), "takes x, y, which b3 does not supply"),
        (dict(train_step=":image"), "none of batch, inputs, micro_batches"),
    ],
)
def test_a_custom_step_that_cannot_do_what_was_asked_is_refused(nets, changes, fragment):
    changes = {k: nets + v if k == "train_step" else v for k, v in changes.items()}
    spec = StepSpec(f"{nets}:mlp", 2, device="cpu", **{"train_step": f"{nets}:my_step", **changes})
    with pytest.raises(B3Error, match=fragment):
        measure(spec, QUICK)


def test_fp16_needs_a_step_that_takes_the_scaler(nets):
    from b3core.workloads.training import Trainer
    from b3core.workloads.user_step import bind_custom_step

    spec = StepSpec(f"{nets}:mlp", 2, "fp16", train_step=f"{nets}:my_step")
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model, optimizer, None, None, torch.contiguous_format)
    with pytest.raises(B3Error, match="must take scaler for fp16"):
        bind_custom_step(trainer, spec)


@pytest.mark.parametrize(
    "model,extra,fragment",
    [
        ("{nets}:not_a_module", {}, "returned a str, not a torch.nn.Module"),
        ("{nets}:broken_factory", {}, "factory failed (ValueError: the factory is broken)"),
        ("{nets}:missing", {}, "has no 'missing'"),
        ("no_such_package.nets:tiny", {}, "'no_such_package.nets' does not import"),
        ("{nets}:mlp", dict(input_shape="3x8x8"), "first train step failed on float32 input of "
         "shape 2x3x8x8 (RuntimeError"),
        ("{nets}:mlp", dict(input_dtype="int64"), "give --vocab-size"),
        ("{nets}:mlp", dict(channels_last=True), "--channels-last needs image input"),
        ("{nets}:mlp", dict(image_size=8), "takes 20 input, not images"),
        ("{nets}:image", dict(loss="{nets}:nope"), "--loss '{nets}:nope'"),
    ],
)  # fmt: skip
def test_each_bad_model_input_is_one_b3error_that_names_it(nets, model, extra, fragment):
    extra = {k: v.format(nets=nets) if isinstance(v, str) else v for k, v in extra.items()}
    spec = StepSpec(model.format(nets=nets), 2, device="cpu", **extra)
    with pytest.raises(B3Error) as caught:
        measure(spec, QUICK)
    assert fragment.format(nets=nets) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_shape_that_does_not_parse_is_refused_by_the_spec():
    for bad in ("3x", "axb", "0x4", ""):
        with pytest.raises(B3Error, match="input shape must look like"):
            StepSpec("simple_cnn", 2, input_shape=bad)


# --- entry points ------------------------------------------------------------------------------


def fake_distribution(site: Path, name: str, version: str, entry_points: dict[str, str]) -> None:
    """An installed distribution as importlib.metadata finds it: a .dist-info on the path."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[b3.models]\n{lines}\n")


def test_an_installed_packages_entry_points_are_models_with_its_name_and_version(
    nets, tmp_path, monkeypatch
):
    site = tmp_path / "site"
    fake_distribution(
        site, "acme-nets", "2.3.1", {"acme_mlp": f"{nets}:mlp", "acme_gone": "acme_gone:f"}
    )
    monkeypatch.syspath_prepend(str(site))
    assert {"acme_mlp", "acme_gone", "simple_cnn"} <= set(list_models())
    assert list_models("acme_*") == ["acme_gone", "acme_mlp"]
    result = measure(StepSpec("acme_mlp", 2, device="cpu"), QUICK)
    assert (result.workload.origin, result.workload.package, result.workload.version) == (
        "entry point",
        "acme-nets",
        "2.3.1",
    )
    with pytest.raises(B3Error, match=r"'acme_gone' from package acme-nets .* does not load"):
        get_model_spec("acme_gone")
    with pytest.raises(B3Error, match="did you mean acme_mlp"):
        get_model_spec("acme_mlpp")


# --- timm --------------------------------------------------------------------------------------

timm = pytest.importorskip("timm")


def test_timm_models_take_timms_defaults_and_record_its_version():
    spec = get_model_spec("timm/resnet18")
    assert (spec.input_shape, spec.num_classes, spec.origin) == ((3, 224, 224), 1000, "timm")
    result = measure(
        StepSpec("timm/resnet18", 2, image_size=32, num_classes=5, device="cpu"), QUICK
    )
    assert result.workload.version == timm.__version__ and result.workload.num_classes == 5
    assert result.workload.parameters == sum(
        p.numel() for p in timm.create_model("resnet18", num_classes=5).parameters()
    )


def test_a_timm_model_whose_layers_depend_on_the_size_is_built_for_it():
    model = create_model("timm/vit_tiny_patch16_224", image_size=32, num_classes=3)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_unknown_timm_names_get_near_names_and_a_missing_timm_the_install_line(monkeypatch):
    with pytest.raises(B3Error, match="did you mean timm/resnet18"):
        get_model_spec("timm/resnet1")
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(B3Error, match=r'pip install "b3core\[timm\]"'):
        get_model_spec("timm/resnet18")
    with pytest.raises(B3Error, match="need timm"):
        model_sources.timm_model_names("resnet*")


# --- the command line --------------------------------------------------------------------------


def test_b3_step_times_an_import_path_model_from_the_path(tmp_path):
    out = tmp_path / "r.json"
    proc = b3(
        "step", "--model", "my_project.nets:tiny_cnn", "--input-shape", "3x16x16",
        "--batch-size", "8", "--device", "cpu", "--repeats", "2", "--json", str(out),
        pythonpath=EXAMPLE / "src",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    workload = json.loads(out.read_text())["result"]["workload"]
    assert workload["input_shape"] == [3, 16, 16] and workload["origin"] == "import path"
    assert "my_project (import path)" in proc.stdout


def test_b3_step_times_a_timm_model():
    proc = b3(
        "step", "--model", "timm/resnet18", "--image-size", "64", "--batch-size", "4",
        "--device", "cpu", "--repeats", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"timm {timm.__version__}, 11,689,512 parameters" in proc.stdout


def test_a_failing_import_is_one_line_and_traceback_shows_the_trace(tmp_path):
    (tmp_path / "fails_on_import.py").write_text("import no_such_dependency\n")
    argv = ["step", "--model", "fails_on_import:f", "--batch-size", "2", "--device", "cpu"]
    proc = b3(*argv, pythonpath=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "--traceback" in proc.stderr
    assert "No module named 'no_such_dependency'" in proc.stderr
    traced = b3(*argv, "--traceback", pythonpath=tmp_path)
    assert traced.returncode == 2 and "Traceback (most recent call last)" in traced.stderr


def test_b3_models_lists_timms_with_wildcards(capsys):
    assert main(["models", "--timm", "resnet1?"]) == 0
    out = capsys.readouterr().out
    assert "timm/resnet18 " in out and "timm/resnet50" not in out


# --- the worked example, installed -------------------------------------------------------------


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory) -> Path:
    """examples/my_project installed (no dependencies, no network) into a folder of its own."""
    site, source = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("src") / "example"
    # a copy: building in place would leave its metadata (egg-info) in the repository's example
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("*.egg-info", "build"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return site


@pytest.mark.slow
def test_the_installed_example_adds_its_models_and_b3_times_them(installed_example, tmp_path):
    listed = b3("models", "my_*", pythonpath=installed_example)
    assert listed.returncode == 0, listed.stderr
    for name in ("my_tiny_cnn", "my_tiny_mlp", "my_tiny_text"):
        assert name in listed.stdout
    assert "entry point" in listed.stdout and "my-project 0.1.0" in listed.stdout

    step = b3(
        "step", "--model", "my_tiny_text", "--batch-size", "16", "--device", "cpu",
        "--repeats", "2", "--train-step", "my_project.training:train_step",
        "--accumulation-steps", "2", pythonpath=installed_example,
    )  # fmt: skip
    assert step.returncode == 0, step.stderr
    assert "my-project 0.1.0 (entry point)" in step.stdout and "int64 input 32" in step.stdout

    out = tmp_path / "sweep"
    sweep = b3(
        "sweep", "--model", "my_tiny_cnn", "--batch-sizes", "8,16", "--device", "cpu",
        "--repeats", "2", "--out", str(out), pythonpath=installed_example,
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr
    rows = json.loads((out / "sweep.json").read_text())["results"]
    assert [r["spec"]["batch_size"] for r in rows] == [8, 16]
    assert {r["workload"]["package"] for r in rows} == {"my-project"}


@pytest.mark.slow
def test_the_examples_pytest_benchmarks_run_through_b3_bench(installed_example, tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(installed_example), "B3_DEVICE": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "benchmarks",
         "--benchmark-only", "--benchmark-min-rounds=2", f"--benchmark-json={out}",
         "--b3-rounds", "2"],
        cwd=EXAMPLE, capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout
    benchmarks = json.loads(out.read_text())["benchmarks"]
    identities = {b["extra_info"]["model_identity"] for b in benchmarks}
    assert identities == {"my-project 0.1.0 (import path)"}


def test_the_examples_asv_suite_is_b3s_classes_over_its_own_models(monkeypatch):
    import importlib.util

    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    where = importlib.util.spec_from_file_location(
        "asv_my_models", EXAMPLE / "benchmarks" / "asv_my_models.py"
    )
    suite = importlib.util.module_from_spec(where)
    where.loader.exec_module(suite)
    for cls in (suite.TrainStep, suite.Inference, suite.TrainCost):
        assert cls.__name__ in vars(suite) and vars(suite)[cls.__name__] is cls
        assert cls.params == [
            ["my_project.nets:tiny_cnn", "my_project.nets:tiny_mlp"],
            [8, 16],
            ["fp32"],
        ]
    bench = suite.TrainCost()
    bench.setup("my_project.nets:tiny_mlp", 8, "fp32")
    assert bench.track_seconds_per_sample("my_project.nets:tiny_mlp", 8, "fp32") > 0


# --- b3 compare on the user's own repository ---------------------------------------------------


def test_compare_leaves_the_profiles_model_names_to_its_workers():
    """The parent need not import a model that only each revision's tree holds."""
    from b3core.suites.cases import CaseOptions, benchmark_cases

    options = CaseOptions(models="only_in_the_worktree.nets:tiny", batch_sizes="8", device="cpu")
    cases = benchmark_cases(options, mode="train", resolve_models=False)
    assert {c.model for c in cases} == {"only_in_the_worktree.nets:tiny"}
    with pytest.raises(B3Error, match="does not import"):
        benchmark_cases(options, mode="train")
    from b3core.cli import build_parser
    from b3core.cli.compare import _cases

    argv = "compare HEAD~1 HEAD --profile quick --model only_in_the_worktree.nets:tiny --device cpu"
    assert {c.model for c in _cases(build_parser().parse_args(argv.split()))} == {
        "only_in_the_worktree.nets:tiny"
    }


def test_each_compare_side_must_time_its_own_trees_model(tmp_path):
    from b3core.studies.compare.sides import Side, SideSpec

    tree = tmp_path / "head"
    (tree / "src" / "my_models").mkdir(parents=True)
    own = tree / "src" / "my_models" / "__init__.py"
    own.write_text("")
    (tree / "src" / "flat.py").write_text("")
    side = Side(SideSpec("head", "HEAD", sys.executable), tree, "0" * 40)
    side.check_imported("my_models", str(own))
    side.check_imported("flat", str(tree / "src" / "flat.py"))
    side.check_imported("elsewhere", "/site-packages/elsewhere/__init__.py")  # not in the tree
    with pytest.raises(B3Error, match="HEAD's worker imported my_models from /site-packages"):
        side.check_imported("my_models", "/site-packages/my_models/__init__.py")
    with pytest.raises(B3Error, match="imported flat from"):
        side.check_imported("flat", "/elsewhere/flat.py")
