"""The CI workflows parse, call only nox sessions that exist, and keep forks off the GPU."""

import functools
import re
import shlex
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.untimed  # nothing here asserts on speed

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / ".github" / "workflows"


def load(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def triggers(workflow: dict) -> dict:
    return workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True


def run_lines(workflow: dict) -> list[str]:
    return [
        step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step
    ]


@functools.cache
def nox_sessions() -> frozenset[str]:
    import importlib.util

    import nox.registry

    spec = importlib.util.spec_from_file_location("b3_noxfile", REPO / "noxfile.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    return frozenset(nox.registry.get())


@pytest.mark.parametrize("name", ["ci.yml", "nightly-gpu.yml"])
def test_every_nox_session_a_workflow_calls_exists(name):
    sessions = nox_sessions()
    called = set()
    for line in run_lines(load(name)):
        for command in re.split(r"&&|\n", line.replace("\\\n", " ")):
            words = shlex.split(command.replace(">", ""), comments=True)
            for i, word in enumerate(words[:-1]):
                if words[0] == "nox" and word == "-s":
                    called.add(words[i + 1])
    assert called, f"{name} runs no nox session"
    assert called <= sessions, f"unknown nox sessions: {called - sessions}"


def test_ci_runs_on_pull_requests_on_cpu_with_the_readme_test_command():
    ci = load("ci.yml")
    assert "pull_request" in triggers(ci)
    runs = run_lines(ci)
    assert "bash .ci/run" in runs
    assert all("self-hosted" not in str(job["runs-on"]) for job in ci["jobs"].values())
    ci_script = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    test_command = "python -m pytest tests"
    assert test_command in readme and test_command in ci_script


def test_nightly_runs_on_schedule_on_gpu_runners_and_never_for_pull_requests():
    nightly = load("nightly-gpu.yml")
    on = triggers(nightly)
    assert "schedule" in on and on["schedule"][0]["cron"]
    assert "pull_request" not in on and "pull_request_target" not in on
    job = nightly["jobs"]["gpu-benchmarks"]
    assert job["runs-on"] == ["self-hosted", "gpu"]
    assert "vars.B3_GPU_RUNNERS == 'true'" in job["if"]  # forks do not inherit the variable
    script = "\n".join(run_lines(nightly))
    assert "nvidia-smi" in script and "torch.cuda.device_count()" in script
    # the regression gates come last, after everything has been published
    gates = job["steps"][-2:]
    assert "asv_continuous" in gates[0]["run"]
    assert gates[1]["if"] == "steps.compare.outcome == 'failure'"
    compare = next(step for step in job["steps"] if step.get("id") == "compare")
    assert "nox -s compare" in compare["run"] and compare["continue-on-error"] is True
    uses = [step.get("uses", "") for step in job["steps"]]
    assert any("upload-artifact" in u for u in uses) and any("gh-pages" in u for u in uses)


def test_asv_config_has_the_required_settings():
    import json

    text = (REPO / "asv.conf.json").read_text()
    config = json.loads(
        "\n".join(line for line in text.splitlines() if not line.strip().startswith("//"))
    )
    assert config["launch_method"] == "spawn"
    assert config["environment_type"] in ("virtualenv", "uv")
    assert set(config["matrix"]["req"]) == {"torch", "torchvision"}
    assert config["branches"] == ["main"] and config["benchmark_dir"] == "benchmarks"
    assert config["default_benchmark_timeout"] >= 600
    assert all(config[k].startswith(".asv/") for k in ("env_dir", "results_dir", "html_dir"))
    assert ".asv/" in (REPO / ".gitignore").read_text()
    assert config["regressions_thresholds"]


def test_readme_main_job_is_a_valid_b3_command():
    import shlex

    from b3core.cli import build_parser

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## The two commands") :]
    main_job = next(line for line in section.splitlines() if line.startswith("b3 "))
    args = build_parser().parse_args(shlex.split(main_job)[1:])
    assert args.command == "sweep" and args.batch_sizes == [15, 16, 17, 31, 32, 33, 63, 64, 65]


def test_pull_requests_compare_base_and_head_without_secrets():
    ci = load("ci.yml")
    assert "pull_request_target" not in triggers(ci)  # a fork's code never sees secrets
    assert ci["permissions"] == {"contents": "read"}
    job = ci["jobs"]["compare"]
    assert job["if"] == "github.event_name == 'pull_request'"
    checkout = job["steps"][0]
    assert checkout["with"]["fetch-depth"] == 0 and checkout["with"]["persist-credentials"] is False
    script = "\n".join(step.get("run", "") for step in job["steps"])
    assert "nox -s compare --" in script and "HEAD --profile quick" in script
    assert "$GITHUB_STEP_SUMMARY" in script


def test_the_nightly_publishes_the_self_contained_asv_site():
    """The artifact and gh-pages get `.asv/html` after `nox -s asv_publish`, which must run
    `b3 publish` (asv's own publish would leave the CDN references in place)."""
    import inspect

    workflow = load("nightly-gpu.yml")
    steps = workflow["jobs"]["gpu-benchmarks"]["steps"]
    runs = [step.get("run", "") for step in steps]
    publish = next(i for i, run in enumerate(runs) if "nox -s asv_publish" in run)
    uploads = [i for i, s in enumerate(steps) if ".asv/html" in str(s.get("with", {}))]
    assert len(uploads) == 2 and min(uploads) > publish  # the artifact and gh-pages
    nox_sessions()
    import nox.registry

    source = inspect.getsource(nox.registry.get()["asv_publish"].func)
    assert '"b3", "publish"' in source


def test_every_nightly_job_keeps_forks_off_the_gpu_runner_and_the_multi_gpu_job_skips_one_gpu():
    nightly = load("nightly-gpu.yml")
    for name, job in nightly["jobs"].items():
        assert "vars.B3_GPU_RUNNERS == 'true'" in job["if"], name
        assert job["runs-on"] == ["self-hosted", "gpu"], name
    multi = nightly["jobs"]["multi-gpu-scaling"]
    assert multi["needs"] == "gpu-benchmarks"
    guarded = [s for s in multi["steps"] if "nox" in s.get("run", "") or "with" in s]
    assert len(guarded) == 3 and all("count > 1" in s.get("if", "") for s in guarded)
