"""`b3 report`: tables and plots from pytest-benchmark JSON files."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="tables and plots from pytest-benchmark JSON files")
    p.add_argument("files", nargs="+", help="--benchmark-json or autosaved files; several compare")
    p.add_argument("--out", default="b3-report", help="folder for report.{md,csv,html,png}")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from b3core.measuring.saved_results import load_benchmark_json
    from b3core.reports.benchmark_report import write_benchmark_report

    report = write_benchmark_report([load_benchmark_json(path) for path in args.files], args.out)
    print(report.markdown)
    print(f"\nwrote {', '.join(str(p) for p in report.paths)}")
    return 0
