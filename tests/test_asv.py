"""asv end to end, on CPU: a two-commit project that uses b3core, a regression flagged by
`asv continuous`, an unchanged pair not flagged, and `asv publish` writing the HTML."""

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

TOY = Path(__file__).parent / "asv_toy"
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "b3",
            "GIT_AUTHOR_EMAIL": "b3@test",
            "GIT_COMMITTER_NAME": "b3",
            "GIT_COMMITTER_EMAIL": "b3@test",
        },
    )
    return proc.stdout.strip()


def commit_with(repo: Path, slowdown: float, message: str) -> str:
    source = repo / "toyproj" / "__init__.py"
    text = source.read_text()
    marker = text[text.index("SLOWDOWN_S = ") :].splitlines()[0]
    source.write_text(text.replace(marker, f"SLOWDOWN_S = {slowdown}"))
    (repo / "NOTES.md").write_text(message + "\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def toy_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("toy")
    shutil.copytree(TOY, repo, dirs_exist_ok=True)
    git(repo, "init", "-q", "-b", "main")
    base = commit_with(repo, 0.0, "first: the step as it was")
    same = commit_with(repo, 0.0, "docs only: no change to the step")
    slow = commit_with(repo, 0.1, "slower: 100 ms more per training step")
    home = repo / "home"
    home.mkdir()
    # torch and b3core come from this interpreter's site-packages through a .pth file (see
    # link_shared_site.py): the toy environment must not download several GB of torch.
    shared = [*site.getsitepackages(), str(REPO / "src")]
    env = {**os.environ, "HOME": str(home), "B3_TOY_SHARED_PATHS": os.pathsep.join(shared)}
    asv(repo, env, "machine", "--yes", "--machine", "toybox")
    return repo, env, base, same, slow


def asv(repo: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "asv", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def continuous(repo, env, base, head):
    # A shared CI CPU once doubled a ~3 ms step's median for a whole run, so the factor is 4:
    # noise cannot reach it, while the injected 100 ms sleep is ~30x the step.
    return asv(repo, env, "continuous", "--factor", "4", "--machine", "toybox", base, head)


def test_unchanged_pair_is_not_flagged(toy_repo):
    repo, env, base, same, _ = toy_repo
    proc = continuous(repo, env, base, same)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "BENCHMARKS NOT SIGNIFICANTLY CHANGED" in proc.stdout


def test_slower_commit_is_flagged_and_fails(toy_repo):
    repo, env, _, same, slow = toy_repo
    proc = continuous(repo, env, same, slow)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "PERFORMANCE DECREASED" in proc.stdout
    assert "time_train_step" in proc.stdout


def test_publish_writes_the_html_site(toy_repo):
    repo, env, *_ = toy_repo
    proc = asv(repo, env, "publish")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (repo / ".asv" / "html" / "index.html").exists()
    assert (repo / ".asv" / "html" / "regressions.json").exists()


def test_b3_machine_registers_the_slug_with_asv(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "b3core.cli",
            "machine",
            "--asv",
            "--asv-config",
            str(REPO / "asv.conf.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    slug = proc.stdout.strip()
    assert f'"{slug}"' in (tmp_path / ".asv-machine.json").read_text()
