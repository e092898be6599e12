"""nox sessions for b3. `nox -l` lists them; `nox -R -s NAME` reuses an environment and skips
the installs. Environments see the interpreter's site-packages, so an installed torch (several
GB) is reused rather than downloaded again. GPU sessions run one at a time, as nox does."""

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = False

REUSE_TORCH = ["--system-site-packages"]


def install(session: nox.Session) -> None:
    session.install("-e", ".[dev]")


def asv_machine(session: nox.Session) -> str:
    """Register this machine under b3's slug (host + GPU model) and return the slug."""
    session.run("b3", "machine", "--asv")
    return session.run("b3", "machine", silent=True).strip()


@nox.session(venv_params=REUSE_TORCH)
def tests(session: nox.Session) -> None:
    """The README's test command."""
    install(session)
    session.run("python", "-m", "pytest", "tests", *session.posargs)


@nox.session(venv_params=REUSE_TORCH)
def lint(session: nox.Session) -> None:
    """ruff, and import-linter's contracts on b3's layers (pyproject.toml)."""
    session.install("ruff", "import-linter")
    session.install("--no-deps", "-e", ".")
    session.run("ruff", "check", "src", "tests", "benchmarks", "examples", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "examples", "noxfile.py")
    session.run("lint-imports")


@nox.session
def docs(session: nox.Session) -> None:
    """The manual (MkDocs, mkdocs.yml): built strictly into site/; `nox -s docs -- serve` serves it."""
    session.install("mkdocs-material")
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", *session.posargs[1:])
    else:
        session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session(venv_params=REUSE_TORCH)
def bench(session: nox.Session) -> None:
    """The pytest-benchmark suite; e.g. `nox -s bench -- --b3-profile b3 --benchmark-autosave`."""
    install(session)
    session.run("pytest", "benchmarks/", "--benchmark-only", *session.posargs)


@nox.session(venv_params=REUSE_TORCH)
def report(session: nox.Session) -> None:
    """`b3 report` on pytest-benchmark JSON files: `nox -s report -- RESULTS.json --out DIR`."""
    install(session)
    session.run("b3", "report", *session.posargs)


@nox.session(venv_params=REUSE_TORCH)
def compare(session: nox.Session) -> None:
    """`b3 compare`, interleaved: `nox -s compare -- origin/main HEAD --profile quick`. No
    regression (0) and inconclusive (3) pass; a regression (1) or a case not compared (2) fails;
    add --fail-on-inconclusive to fail on 3 too."""
    install(session)
    args = session.posargs or ["origin/main", "HEAD", "--profile", "quick", "--device", "cpu"]
    session.run("b3", "compare", *args, success_codes=[0, 3])


@nox.session(venv_params=REUSE_TORCH)
def scale(session: nox.Session) -> None:
    """DDP scaling efficiency (`b3 scale`), e.g. `nox -s scale -- --nproc-per-node 1,2,4`."""
    install(session)
    session.run("b3", "scale", *session.posargs)


@nox.session(venv_params=REUSE_TORCH)
def asv_quick(session: nox.Session) -> None:
    """Smoke run of the asv suite in this environment: every benchmark once, nothing saved."""
    install(session)
    machine = asv_machine(session)
    session.run(
        "asv",
        "run",
        "--environment",
        "existing:python",
        "--quick",
        "--dry-run",
        "--show-stderr",
        "--machine",
        machine,
        *session.posargs,
    )


@nox.session(venv_params=REUSE_TORCH)
def asv_run(session: nox.Session) -> None:
    """Benchmark the commits not benchmarked yet on this machine (`asv run NEW`)."""
    install(session)
    machine = asv_machine(session)
    session.run("asv", "run", "NEW", "--machine", machine, "--show-stderr", *session.posargs)


@nox.session(venv_params=REUSE_TORCH)
def asv_continuous(session: nox.Session) -> None:
    """Base vs head; fails when something got slower. `nox -s asv_continuous -- BASE HEAD`."""
    install(session)
    machine = asv_machine(session)
    if len(session.posargs) > 2:
        session.error("usage: nox -s asv_continuous -- [BASE [HEAD]]")
    defaults = ["HEAD~1", "HEAD"]  # a missing BASE or HEAD takes its default
    base, head = [*session.posargs, *defaults[len(session.posargs) :]]
    session.run(
        "asv", "continuous", "--factor", "1.15", "--machine", machine, "--show-stderr", base, head
    )


@nox.session(venv_params=REUSE_TORCH)
def asv_publish(session: nox.Session) -> None:
    """Write the HTML history to .asv/html (with regressions.json and an Atom feed), made
    self-contained by `b3 publish`: it views offline."""
    install(session)
    session.run("b3", "publish", *session.posargs)


@nox.session(venv_params=REUSE_TORCH)
def asv_preview(session: nox.Session) -> None:
    """Serve .asv/html locally."""
    install(session)
    session.run("asv", "preview", *session.posargs)
