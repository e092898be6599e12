"""The README and the manual in docs/: short, buildable, and with no stale example. Every `b3`
command they show parses with today's options, and every shown output (a `$ b3 ...` line in a
text block, then what it printed) is run again and checked: the same table columns, the same
labelled lines, the same one-line errors."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from b3core.cli import build_parser, main

pytestmark = pytest.mark.untimed  # nothing here asserts on speed

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Appended to a shown command when it is run again: the same output, in seconds not minutes
# (argparse keeps an option's last value).
CHEAPER = {
    "step": ["--device", "cpu", "--repeats", "3", "--warmup", "2", "--image-size", "32"],
    "run": ["--device", "cpu", "--train-size", "300", "--runs", "2"],
    "sweep": ["--device", "cpu", "--image-size", "32", "--batch-sizes", "15-17", "--passes", "2",
              "--repeats", "2", "--yes"],
}  # fmt: skip


def fenced_blocks(page: Path):
    """(language, lines) of each fenced block."""
    lang, lines = None, []
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, lines = line[3:].strip() or "text", []
            else:
                yield lang, lines
                lang = None
        elif lang is not None:
            lines.append(line)


def shell_commands(lines):
    """The commands of a shell block, continuation lines joined, comments dropped."""
    joined = "\n".join(lines).replace("\\\n", " ")
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            yield words


def shown_commands():
    """(page, b3 argv) for each b3 command the pages show, but those shown failing."""
    for page in PAGES:
        for lang, lines in fenced_blocks(page):
            if lang not in ("bash", "sh", "console"):
                continue
            for words in shell_commands(lines):
                if "-m" in words and "b3core.cli" in words:  # torchrun ... -m b3core.cli step
                    words = ["b3", *words[words.index("b3core.cli") + 1 :]]
                if words[0] == "b3" and not any("$(" in w for w in words):
                    yield page.relative_to(ROOT), words[1:]
    for page, argv, printed in shown_outputs():
        if not any(": error: " in line for line in printed):
            yield page, argv
    for line in (ROOT / "README.md").read_text().splitlines():  # the table of commands
        for span in re.findall(r"`b3 ([a-z-]+ [^`]+)`", line):
            yield Path("README.md"), shlex.split(span)


def shown_outputs():
    """(page, argv, printed lines) for each `$ b3 ...` line of a text block."""
    for page in PAGES:
        for lang, lines in fenced_blocks(page):
            if lang != "text":
                continue
            current = None
            for line in lines:
                if line.startswith("$ b3 "):
                    if current:
                        yield current
                    current = (page.relative_to(ROOT), shlex.split(line[5:]), [])
                elif current:
                    current[2].append(line)
            if current:
                yield current


def table_headers(lines):
    """The column names of each Markdown table in the lines."""
    headers = []
    for line, rule in zip(lines, lines[1:]):
        if line.startswith("|") and re.fullmatch(r"\|[:\-| ]+\|", rule.strip()):
            headers.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return headers


def labels(lines):
    """The labels of `  label   value` lines (b3 step's report)."""
    return {m.group(1) for line in lines if (m := re.match(r"^  ([a-z][a-z ]*?[a-z])  +\S", line))}


def test_the_readme_is_one_page_with_the_code_map_near_the_top():
    readme = (ROOT / "README.md").read_text().splitlines()
    assert len(readme) <= 210
    headings = [line for line in readme if line.startswith("## ")]
    assert headings.index("## Where the code is") <= 3
    assert "python -m pytest tests" in readme


def test_the_pages_show_commands_to_check():
    assert len(list(shown_commands())) >= 35 and len(list(shown_outputs())) >= 5


@pytest.mark.parametrize("page,argv", list(shown_commands()), ids=lambda x: str(x)[:60])
def test_every_shown_command_parses_with_todays_options(page, argv):
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{page}: `b3 {shlex.join(argv)}` no longer parses (exit {exc.code})")


@pytest.mark.parametrize("page,argv,printed", list(shown_outputs()), ids=lambda x: str(x)[:60])
def test_every_shown_output_is_still_what_b3_prints(page, argv, printed, capsys, tmp_path,
                                                    monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    errors = [line for line in printed if ": error: " in line]
    if errors:  # bad input: the very same line, before anything is measured
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        err = capsys.readouterr().err.strip()
        assert code == 2 and err == errors[0], f"{page}: b3 {shlex.join(argv)}"
        return
    code = main([*argv, *CHEAPER.get(argv[0], [])])
    out = capsys.readouterr().out.splitlines()
    assert code == 0, f"{page}: b3 {shlex.join(argv)} exited {code}"
    for header in table_headers(printed):
        assert header in table_headers(out), f"{page}: columns {header} no longer printed"
    assert labels(printed) <= labels(out), f"{page}: {labels(printed) - labels(out)} not printed"


def test_the_manual_builds_strictly(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "compare" / "index.html").exists()
