"""`b3 compare` end to end, in throwaway git repositories of a user's project (its model's
forward pass does more work at HEAD): a large slowdown is a regression, HEAD against HEAD is
not, each epoch's workers are fresh processes of their side's code, bad input is one line and
exit 2, and nothing is left behind (worktrees, servers, workers), also after Ctrl-C or a dead
worker."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import b3core
from b3core.studies.compare.slowed_project import (
    FACTORY,
    FORWARD,
    commit_change,
    slowed_project,
)
from tests.cli_helpers import b3_here

# The statistics are tested in test_compare_stats.py, the mechanics here.
FAST = ["--model", FACTORY, "--batch-size", "8", "--device", "cpu", "--epoch-time", "0.5"]
# extra 128x128 products per forward pass that make simple_cnn's step (about 1.5 ms at batch 8
# on a CPU) several times as long
LARGE_SLOWDOWN_OPS = 100
SLOWER = ("HEAD~2", "HEAD")  # the user's model, and HEAD: slower, and a layer more
A_LAYER_MORE = "        self.inner = nn.Sequential(inner, nn.Linear(10, 10))\n"


def b3_compare(repo: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "b3core.cli", "compare", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def b3_compare_here(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """b3_compare's answer from this process, for input that b3 refuses before it starts any
    worker: no interpreter to import torch into."""
    with contextlib.chdir(repo):
        return b3_here("compare", *args)


def worktrees(repo: Path) -> list[str]:
    out = subprocess.run(
        ["git", "-C", str(repo), "worktree", "list", "--porcelain"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in out.splitlines() if line.startswith("worktree ")]


def _command_lines() -> list[str]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return found


def workers_running(repo: Path) -> list[str]:
    """Command lines of live servers and workers (and their ranks) of b3's worktrees; a forked
    worker shows its server's command line."""
    return [
        line for line in _command_lines() if "compare/worker.py" in line and "b3-compare-" in line
    ]


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """HEAD~2: the user's model; HEAD~1: its forward pass several times as long; HEAD: a layer
    more as well (which tells the sides' workers apart)."""
    repo = slowed_project(tmp_path_factory.mktemp("compare") / "repo", LARGE_SLOWDOWN_OPS)
    commit_change(repo, "        self.inner = inner\n", A_LAYER_MORE, "head: a layer more")
    return repo


@pytest.fixture(scope="module")
def slowdown(repo, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """One comparison of the user's model with HEAD, read by the tests below: its run and the
    folder of its JSON, plot and Markdown."""
    out = tmp_path_factory.mktemp("slowdown")
    proc = b3_compare(
        repo,
        *SLOWER,
        *FAST,
        *("--min-rounds", "2", "--max-time", "12", "--alpha", "0.2"),
        *("--json", str(out / "compare.json"), "--plot", str(out / "blocks.png")),
        *("--markdown", str(out / "summary.md")),
    )
    return proc, out


def one_line_error(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    assert proc.returncode == code, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return errors[0]


@pytest.mark.slow
def test_a_large_slowdown_is_a_regression(repo, slowdown):
    proc, out = slowdown
    assert proc.returncode == 1, proc.stdout + proc.stderr
    record = json.loads((out / "compare.json").read_text())
    assert record["verdict"] == "regression"
    assert record["ratio"] > 2 and record["ci95"][0] > 1.5 and record["p"] < 0.05
    sides = record["sides"]
    head_sha = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert sides["head"]["sha"] == head_sha and sides["base"]["sha"] != head_sha
    assert sides["head"]["machine"]["torch"] and sides["base"]["b3core_version"]
    case = record["cases"][0]
    blocks = case["blocks"]
    assert {b["side"] for b in blocks} == {"base", "head"} and all(b["times_s"] for b in blocks)
    assert "regression" in proc.stdout and "decision interval" in proc.stdout
    assert (out / "blocks.png").stat().st_size > 0
    summary = (out / "summary.md").read_text()
    assert summary.startswith(f"### b3 compare {' '.join(SLOWER)}") and f"| {FACTORY}" in summary
    assert len(worktrees(repo)) == 1 and not workers_running(repo)


@pytest.mark.slow
def test_every_epoch_runs_fresh_forked_workers_of_each_sides_own_code(slowdown):
    """Each epoch's two workers are new processes (no pid seen twice, none the server's),
    forked, and each timed the user's model from its own side's tree (b3core as installed):
    HEAD's has a layer more, and the report says that the sides timed different models."""
    record = json.loads((slowdown[1] / "compare.json").read_text())
    assert record["workers"]["start"] == "fork"
    case = record["cases"][0]
    pids = [reply["pid"] for side in ("base", "head") for reply in case["prepared"][side]]
    assert len(pids) == 2 * case["epochs"] >= 4 and len(set(pids)) == len(pids)
    rounds = [epoch["round"] for epoch in case["epoch_log"]]
    servers = {}
    for side in ("base", "head"):
        code = Path(record["sides"][side]["code"])
        replies = case["prepared"][side]
        assert all(Path(r["model_file"]).is_relative_to(code) for r in replies)
        by_round = {}
        for number, reply in zip(rounds, replies):
            by_round.setdefault(number, set()).add(reply["parent_pid"])
        assert all(len(parents) == 1 for parents in by_round.values())  # a round's one server
        servers[side] = set().union(*by_round.values())
        assert len(servers[side]) == case["rounds"] and not servers[side] & set(pids)
    assert not servers["base"] & servers["head"]
    parameters = {side: case["prepared"][side][0]["workload"]["parameters"] for side in servers}
    assert parameters["head"] == parameters["base"] + 110
    assert {case["prepared"][side][0]["workload"]["origin"] for side in servers} == {"import path"}
    assert "the sides timed different models" in slowdown[0].stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["no-such-revision", "HEAD"], "unknown revision 'no-such-revision'"),
        (["HEAD"], "give both BASE and HEAD"),
        (["HEAD~1", "HEAD", "--base-python", "/no/such/python"], "no interpreter"),
        (["HEAD~1", "HEAD", "--threshold", "2"], "between 0 and 1"),
        ([], "give BASE and HEAD revisions"),
        (["--saved", "a.json", "b.json", "--nproc-per-node", "2"], "no revisions, interpreters"),
        (["HEAD~1", "HEAD", "--nproc-per-node", "0"], "--nproc-per-node"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(repo, args, fragment):
    case = ["--model", "simple_cnn", "--batch-size", "8", "--device", "cpu"]
    proc = b3_compare_here(repo, *args, *case)
    assert fragment in one_line_error(proc)
    assert len(worktrees(repo)) == 1


def test_compare_under_torchrun_is_one_line(repo, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    proc = b3_compare_here(repo, "HEAD~1", "HEAD", *FAST)
    assert "run it without torchrun" in one_line_error(proc)


@pytest.mark.slow
@pytest.mark.untimed  # HEAD's forward pass is several times as long: a regression at any load
def test_each_side_can_be_a_world_of_data_parallel_ranks(repo, tmp_path):
    """--nproc-per-node 2: each side's worker launches 2 gloo ranks; a block is its slowest
    rank's time, every rank's is kept, and HEAD's extra work in every rank is a regression."""
    out = tmp_path / "compare.json"
    proc = b3_compare(
        repo,
        *SLOWER,
        *FAST,
        "--nproc-per-node",
        "2",
        "--min-rounds",
        "2",
        "--alpha",
        "0.2",
        "--max-time",
        "20",
        "--json",
        str(out),
        timeout=240,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    record = json.loads(out.read_text())
    assert record["verdict"] == "regression" and record["ratio"] > 1.5
    for side in ("base", "head"):
        assert record["sides"][side]["world_size"] == 2
        assert record["sides"][side]["backend"] == "gloo"
    for block in record["cases"][0]["blocks"]:
        ranks = block["rank_times_s"]
        assert len(ranks) == 2
        assert block["times_s"] == [max(times) for times in zip(*ranks)]
    assert "2 data-parallel ranks" in proc.stdout
    assert len(worktrees(repo)) == 1 and not workers_running(repo)


@pytest.mark.slow
@pytest.mark.untimed
def test_a_rank_out_of_memory_is_named_and_no_rank_is_left(tmp_path):
    repo = slowed_project(tmp_path / "repo", 0)
    commit_change(
        repo,
        FORWARD,
        FORWARD + '        if __import__("os").environ["RANK"] == "1":\n'
        '            raise MemoryError("simulated: rank 1 does not fit")\n',
        "head: rank 1 runs out of memory",
    )
    out = tmp_path / "compare.json"
    proc = b3_compare(
        repo, "HEAD~1", "HEAD", *FAST, "--nproc-per-node", "2", "--json", str(out), timeout=120
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    failure = json.loads(out.read_text())["cases"][0]["failure"]
    assert failure.startswith("HEAD: out of memory (rank 1: ") and "does not fit" in failure
    assert len(worktrees(repo)) == 1 and not workers_running(repo)


def test_ranks_die_with_their_launcher():
    """A side's ranks lead sessions of their own; killing their launcher outright (as the
    parent does to a hung worker) still ends them."""
    from b3core.studies.compare.workers import WORKER_FILE

    def ranks() -> int:
        return sum(1 for line in _command_lines() if "--rank " in line and "b3-test-" in line)

    launcher = subprocess.Popen(
        [sys.executable, str(WORKER_FILE), "b3-test-ranks", "--nproc-per-node", "2"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        launcher.stdin.write(json.dumps({"op": "hello"}) + "\n")
        launcher.stdin.flush()
        assert json.loads(launcher.stdout.readline())["world_size"] == 2
        assert ranks() == 2
    finally:
        launcher.kill()
        launcher.wait()
    deadline = time.monotonic() + 10
    while ranks() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ranks() == 0


def test_a_dirty_tree_cannot_be_worktree(repo):
    (repo / "README.md").write_text("uncommitted\n")
    subprocess.run(["git", "-C", str(repo), "add", "README.md"], check=True)
    try:
        proc = b3_compare_here(repo, "HEAD", "WORKTREE", *FAST)
        assert "uncommitted changes" in one_line_error(proc)
    finally:
        subprocess.run(["git", "-C", str(repo), "rm", "-qf", "--cached", "README.md"])
        (repo / "README.md").unlink()


def test_revisions_outside_a_git_repository(tmp_path):
    proc = b3_compare_here(tmp_path, "HEAD~1", "HEAD", *FAST)
    assert "not in a git repository" in one_line_error(proc)


@pytest.mark.slow
@pytest.mark.untimed
def test_a_side_without_the_model_is_one_line(repo):
    proc = b3_compare(repo, "HEAD~1", "HEAD", *FAST[2:], "--model", "no_such_net", timeout=90)
    assert "unknown model 'no_such_net'" in one_line_error(proc)
    assert len(worktrees(repo)) == 1 and not workers_running(repo)


@pytest.mark.untimed
def test_a_server_names_a_model_it_cannot_build_before_it_forks_any_worker(repo):
    """A side's server is asked to import the model (in a compare, both sides' at once); its
    answer is read, and a failure is the side's one-line error before any worker is forked."""
    from b3core.errors import B3Error
    from b3core.studies.compare.sides import WORKTREE, Side, SideSpec
    from b3core.studies.compare.workers import Zygote

    server = Zygote(Side(SideSpec("head", WORKTREE, sys.executable), repo, None))
    try:
        server.start_preload("no_such_net")
        with pytest.raises(B3Error, match="HEAD.*unknown model 'no_such_net'"):
            server.preloaded()
    finally:
        server.close()


@pytest.mark.slow
@pytest.mark.untimed
def test_a_side_whose_model_does_not_import(tmp_path):
    repo = slowed_project(tmp_path / "repo", 0)
    commit_change(repo, "import torch\n", "import torch\nimport no_such_module\n", "head: a typo")
    proc = b3_compare(repo, "HEAD~1", "HEAD", *FAST, timeout=90)
    line = one_line_error(proc)
    assert "HEAD" in line and "no_such_module" in line
    assert len(worktrees(repo)) == 1 and not workers_running(repo)


@pytest.mark.slow
@pytest.mark.untimed
def test_out_of_memory_on_one_side_is_reported_not_judged(tmp_path):
    repo = slowed_project(tmp_path / "repo", 0)
    commit_change(
        repo,
        FORWARD,
        FORWARD + '        raise MemoryError("simulated: the batch does not fit")\n',
        "head: every step runs out of memory",
    )
    out = tmp_path / "compare.json"
    proc = b3_compare(repo, "HEAD~1", "HEAD", *FAST, "--json", str(out), timeout=90)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    record = json.loads(out.read_text())
    case = record["cases"][0]
    assert case["verdict"] == "not compared" and "HEAD: out of memory" in case["failure"]
    assert record["ratio"] is None
    assert "out of memory" in proc.stdout
    assert len(worktrees(repo)) == 1 and not workers_running(repo)


@pytest.mark.slow
@pytest.mark.untimed
def test_a_dying_worker_ends_both_and_removes_the_worktrees(tmp_path):
    repo = slowed_project(tmp_path / "repo", 0)
    commit_change(
        repo,
        FORWARD,
        FORWARD + '        __import__("os")._exit(9)\n',
        "head: the worker dies in its first step",
    )
    proc = b3_compare(repo, "HEAD~1", "HEAD", *FAST, timeout=90)
    assert "worker died" in one_line_error(proc)
    assert len(worktrees(repo)) == 1 and not workers_running(repo)


@pytest.mark.slow
@pytest.mark.untimed  # signals and clean-up; any verdict
def test_ctrl_c_ends_the_workers_and_removes_the_worktrees(repo):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "b3core.cli",
            "compare",
            "HEAD~1",
            "HEAD",
            *FAST,
            "--max-time",
            "100",
            "--min-rounds",
            "50",
        ],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a suite started in the background (`.ci/run &`) ignores SIGINT,
        # and its children would inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while not workers_running(repo) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert workers_running(repo), "no worker started"
    time.sleep(8)  # into the timed blocks
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert FACTORY in stdout  # what was measured is still reported
    assert len(worktrees(repo)) == 1 and not workers_running(repo)


def saved_run(path: Path, step_s: float, seed: int, slug: str = "vm-cpu") -> Path:
    """A pytest-benchmark JSON holding one b3 case with 30 raw times around step_s."""
    import numpy as np

    from b3core.measuring.result import PeakMemory, StepResult
    from b3core.measuring.stats import Measurement
    from b3core.spec.step import StepSpec

    times = np.exp(np.random.default_rng(seed).normal(np.log(step_s), 0.02, 30))
    result = StepResult(
        StepSpec(model="simple_cnn", batch_size=8, device="cpu"),
        Measurement(tuple(times), 8, 1, "blocked"),
        PeakMemory(1000, None, "rss"),
        "cpu",
    )
    record = {"name": "x", "extra_info": {"b3_result": result.to_dict()}}
    path.write_text(json.dumps({"machine_info": {"b3_slug": slug}, "benchmarks": [record]}))
    return path


@pytest.mark.parametrize(
    ("head_step_s", "verdict", "code"),
    [(0.012, "regression", 1), (0.010, "no regression", 0), (0.008, "faster", 0)],
)
def test_saved_runs_get_a_significance_test(tmp_path, head_step_s, verdict, code):
    base = saved_run(tmp_path / "base.json", 0.010, seed=1)
    head = saved_run(tmp_path / "head.json", head_step_s, seed=2)
    out = tmp_path / "verdict.json"
    proc = b3_compare_here(tmp_path, "--saved", str(base), str(head), "--json", str(out))
    assert proc.returncode == code, proc.stderr
    record = json.loads(out.read_text())
    assert record["verdict"] == verdict and record["interleaved"] is False
    assert record["ratio"] == pytest.approx(head_step_s / 0.010, rel=0.03)
    assert record["ci95"][0] < record["ratio"] < record["ci95"][1] and 0 <= record["p"] <= 1
    assert "weaker evidence" in proc.stdout


def test_saved_runs_that_share_no_case(tmp_path):
    base = saved_run(tmp_path / "base.json", 0.010, seed=1)
    other = json.loads(base.read_text())
    other["benchmarks"][0]["extra_info"]["b3_result"]["spec"]["batch_size"] = 16
    head = tmp_path / "head.json"
    head.write_text(json.dumps(other))
    proc = b3_compare_here(tmp_path, "--saved", str(base), str(head))
    assert "share no b3 case" in one_line_error(proc)
    missing = b3_compare_here(tmp_path, "--saved", str(base), str(tmp_path / "nope.json"))
    assert "does not exist" in one_line_error(missing)


@pytest.mark.slow
def test_identical_code_on_two_interpreters_is_no_regression(repo, tmp_path):
    """--base-python/--head-python: the working tree as it is, on each side's interpreter;
    the same code on both sides is shown to be no slowdown (within the threshold)."""
    out = tmp_path / "compare.json"
    proc = b3_compare(
        repo,
        *("--base-python", sys.executable, "--head-python", sys.executable),
        *FAST,
        *("--threshold", "0.5", "--alpha", "0.2", "--min-rounds", "2", "--max-time", "10"),
        *("--json", str(out)),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads(out.read_text())
    # "no regression" rests on the decision interval (each end at the spent alpha), not on the
    # 95% one printed beside it, which may reach past the threshold
    decided = record["cases"][0]["estimate"]
    assert record["verdict"] == "no regression" and decided["decision_ci"][1] < 1.5
    assert decided["decision_ci"][1] <= decided["ci95"][1]
    for side in ("base", "head"):
        side = record["sides"][side]
        assert side["revision"] == "WORKTREE" and side["python"] == sys.executable
        assert Path(side["b3core_path"]) == Path(b3core.__file__).parent
    assert len(worktrees(repo)) == 1


def test_a_profile_gives_every_case_and_the_case_options_narrow_it():
    from b3core.cli import build_parser
    from b3core.cli.compare import _cases

    parse = build_parser().parse_args
    args = parse(["compare", "A", "B", "--profile", "quick", "--device", "cpu"])
    everything = _cases(args)
    assert len(everything) > 10 and {c.mode for c in everything} == {"train", "inference"}
    narrowed = _cases(
        parse(
            [
                "compare",
                "A",
                "B",
                "--profile",
                "quick",
                "--device",
                "cpu",
                "--model",
                "simple_cnn",
                "--batch-size",
                "16",
            ]
        )
    )
    assert {(c.model, c.batch_size) for c in narrowed} == {("simple_cnn", 16)}
    assert {c.accumulation_steps for c in narrowed if c.mode == "train"} == {1, 2}
    one = _cases(
        parse(
            [
                "compare",
                "A",
                "B",
                "--model",
                "resnet18",
                "--batch-size",
                "4",
                "--device",
                "cpu",
                "--image-size",
                "32",
            ]
        )
    )
    assert [(c.model, c.batch_size, c.image_size, c.mode) for c in one] == [
        ("resnet18", 4, 32, "train")
    ]


def test_outputs_that_cannot_be_written_fail_first(repo, tmp_path):
    """Before minutes of measuring, not after them."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    began = time.monotonic()
    proc = b3_compare_here(repo, "HEAD~1", "HEAD", *FAST, "--json", str(blocker / "out.json"))
    assert "--json" in one_line_error(proc) and "cannot" in proc.stderr
    assert time.monotonic() - began < 30 and len(worktrees(repo)) == 1


def _older_minor_release(root: Path) -> str | None:
    """The newest commit of this repository whose b3core is at least one minor version older
    than the checkout's (pyproject.toml's version), or None without that history."""
    import re

    def minor(text: str) -> tuple[int, int]:
        major, minor_, *_ = re.search(r'^version = "([^"]+)"', text, re.MULTILINE)[1].split(".")
        return int(major), int(minor_)

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True
        ).stdout

    now = minor((root / "pyproject.toml").read_text())
    for sha in git("log", "--format=%H", "--", "pyproject.toml").split():
        if minor(git("show", f"{sha}:pyproject.toml")) < now:
            return sha
    return None


@pytest.mark.slow
@pytest.mark.untimed  # any verdict: the sides' protocol is what it checks
def test_last_minor_release_compares_through_its_own_internals(tmp_path):
    """A base side at the last minor release of b3 (before the versioned entry point) still
    compares: the worker adapts to its internals, and each side runs its own b3core."""
    root = Path(__file__).resolve().parents[1]
    old = _older_minor_release(root)
    if old is None:
        pytest.skip("this checkout has no history of an older b3 release")
    out = tmp_path / "compare.json"
    case = ["--model", "simple_cnn", "--batch-size", "8", "--device", "cpu"]
    proc = b3_compare(
        root, old, "HEAD", *case, "--max-time", "10", "--min-rounds", "2", "--json", str(out)
    )
    assert proc.returncode in (0, 1, 3), proc.stderr
    record = json.loads(out.read_text())
    sides = record["sides"]
    assert sides["base"]["endpoint_version"] == 0 and sides["head"]["endpoint_version"] >= 1
    assert sides["base"]["b3core_version"] != sides["head"]["b3core_version"]
    for side in ("base", "head"):
        assert Path(sides[side]["b3core_path"]).is_relative_to(sides[side]["code"])
    assert record["cases"][0]["rounds"] >= 2


@pytest.mark.untimed
def test_a_side_whose_b3core_lacks_a_field_the_step_sets_refuses_it():
    """An older revision's StepSpec would drop a field it does not know (from_dict ignores
    unknown keys) and time another step; its worker refuses the step instead."""
    from b3core.studies.compare import worker

    class Endpoint:
        def handle(self, request):
            return {"ran": request["op"]}, None

    spec = {"model": "simple_cnn", "batch_size": 2, "quantum_mode": "on"}
    answer, failure = worker.handle(
        Endpoint(), {"op": "prepare", "spec": spec, "set_fields": list(spec)}
    )
    assert failure is answer and answer["error"] == "bad_input"
    assert "--quantum-mode" in answer["message"] and "--batch-size" not in answer["message"]
    known = {"op": "prepare", "spec": spec, "set_fields": ["model", "batch_size"]}
    assert worker.handle(Endpoint(), known) == ({"ran": "prepare"}, None)
