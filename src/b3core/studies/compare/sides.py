"""What each side of a comparison runs, and the git worktrees that hold its code.

A side is a revision of the current repository (or WORKTREE, the working tree in place) run by
an interpreter. b3 checks each revision out into its own temporary worktree (`git worktree add
--detach`), so the user's working tree is never touched, and removes it afterwards, whatever
happened.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from b3core.errors import B3Error

WORKTREE = "WORKTREE"  # the working tree as it is, used in place


@dataclass(frozen=True)
class SideSpec:
    """One side as the user named it."""

    name: str  # "base" or "head"
    revision: str  # a git revision, or WORKTREE
    python: str  # the interpreter that runs this side's worker


@dataclass(frozen=True)
class Side:
    """A side ready to run: its code's directory and the commit it holds."""

    spec: SideSpec
    code_dir: Path  # the worktree (or the working tree) whose code the worker imports
    sha: str | None  # None outside a git repository (interpreter comparisons only)
    dirty: bool = False  # uncommitted changes (allowed only when both sides share them)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def python_path(self) -> list[str]:
        """What goes first on the worker's PYTHONPATH: the code's src/ (src layout) or root."""
        src = self.code_dir / "src"
        return [str(src if src.is_dir() else self.code_dir)]

    def check_imported(self, module: str, imported_file: str | None) -> None:
        """A module that this side's tree holds (b3core, the user's model) must be timed from
        that tree, not from a copy installed elsewhere; a one-line B3Error says which won."""
        base = Path(self.python_path[0], *module.split("."))
        own = [p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()]
        if not own or imported_file is None:
            return
        if Path(imported_file).resolve() != own[0].resolve():
            raise B3Error(
                f"{self.name.upper()}'s worker imported {module} from {imported_file}, "
                f"not from its own tree {own[0]}"
            )


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["git failed"])[-1]
        raise B3Error(f"git {args[0]}: {detail}")
    return proc.stdout.strip()


def repository_root(start: Path | None = None) -> Path | None:
    """The root of the git repository around `start` (default: the current directory)."""
    if shutil.which("git") is None:
        return None
    proc = subprocess.run(
        ["git", "-C", str(start or Path.cwd()), "rev-parse", "--show-toplevel"],
        capture_output=True,
        text=True,
    )
    return Path(proc.stdout.strip()) if proc.returncode == 0 else None


def resolve_revision(repo: Path, revision: str) -> str:
    """The commit SHA a revision names; an unknown one is a one-line B3Error."""
    proc = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise B3Error(f"unknown revision {revision!r} in {repo}")
    return proc.stdout.strip()


def is_dirty(repo: Path) -> bool:
    return bool(git(repo, "status", "--porcelain"))


def check_python(python: str) -> str:
    """The interpreter's path; a missing or broken one is a one-line B3Error."""
    found = shutil.which(python) or (python if os.access(python, os.X_OK) else None)
    if found is None or not Path(found).is_file():
        raise B3Error(f"no interpreter at {python!r}")
    return found


@contextmanager
def checked_out(specs: list[SideSpec], repo: Path | None) -> Iterator[list[Side]]:
    """Each side's code on disk for as long as the block runs. Revisions get their own
    temporary worktree (the same SHA twice gets two), removed on the way out, also on errors
    and Ctrl-C. WORKTREE on both sides (an interpreter comparison) shares the working tree as it
    is; WORKTREE against a revision needs a clean tree, so that the result names a commit."""
    shared_tree = all(spec.revision == WORKTREE for spec in specs)
    made: list[Path] = []
    scratch = Path(tempfile.mkdtemp(prefix="b3-compare-"))
    try:
        sides = []
        for spec in specs:
            if repo is None:
                if spec.revision != WORKTREE:
                    raise B3Error(
                        f"{spec.name} names revision {spec.revision!r}, but "
                        f"{Path.cwd()} is not in a git repository"
                    )
                sides.append(Side(spec, Path.cwd(), None))
                continue
            if spec.revision == WORKTREE:
                dirty = is_dirty(repo)
                if dirty and not shared_tree:
                    raise B3Error(
                        f"{spec.name} is {WORKTREE}, but the working tree has uncommitted "
                        "changes: commit or stash them, so the result names a revision"
                    )
                sides.append(Side(spec, repo, resolve_revision(repo, "HEAD"), dirty))
                continue
            sha = resolve_revision(repo, spec.revision)
            where = scratch / spec.name
            made.append(where)  # before the add: an interrupted add is cleaned up too
            git(repo, "worktree", "add", "--detach", "--quiet", str(where), sha)
            sides.append(Side(spec, where, sha))
        yield sides
    finally:
        with signals_deferred():
            _remove_worktrees(repo, made)
            shutil.rmtree(scratch, ignore_errors=True)


def _remove_worktrees(repo: Path | None, made: list[Path]) -> None:
    """Remove b3's worktrees; prune only when a removal failed (an add cut short leaves an
    entry without its folder), which also prunes other entries whose folders are gone."""
    failed = False
    for where in made:
        proc = subprocess.run(
            ["git", "-C", str(repo), "worktree", "remove", "--force", str(where)],
            capture_output=True,
        )
        failed = failed or proc.returncode != 0
    if failed:
        subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block has run: cleanup is not cut short."""
    signals = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
