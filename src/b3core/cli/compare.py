"""`b3 compare`: did HEAD make the step slower than BASE? Both interleaved in one job."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from b3core.cli.launch import add_launch_options
from b3core.cli.options import (
    add_fields_as_options,
    check_writable,
    renamed,
    spec_from_args,
    write_json,
)
from b3core.errors import B3Error
from b3core.spec.case_options import AXES, CaseOptions, narrowed_to
from b3core.spec.step import PROFILES, StepSpec, Timing

# With --profile these narrow the profile; without it they describe the one case
PROFILE_AXES = (*AXES.values(), "mode")


def register(sub: argparse._SubParsersAction) -> None:
    from b3core.studies.compare.settings import CompareSettings, exit_codes_text
    from b3core.studies.compare.sides import WORKTREE

    p = sub.add_parser(
        "compare",
        help="is HEAD slower than BASE? two revisions (or interpreters), interleaved in one job",
        description=exit_codes_text(),
    )
    p.add_argument("base", nargs="?", help=f"git revision, or {WORKTREE} (the clean tree)")
    p.add_argument("head", nargs="?", help=f"git revision, or {WORKTREE} (the clean tree)")
    p.add_argument("--base-python", metavar="PATH", help="interpreter for BASE (its own venv)")
    p.add_argument("--head-python", metavar="PATH", help="interpreter for HEAD (its own venv)")
    p.add_argument(
        "--saved",
        nargs=2,
        metavar=("BASE.json", "HEAD.json"),
        help="judge two saved pytest-benchmark runs instead (weaker evidence: not interleaved)",
    )
    p.add_argument("--profile", choices=PROFILES, help="compare every case of a profile")
    add_fields_as_options(p, StepSpec, defaults=dict.fromkeys(PROFILE_AXES))
    # the workers time blocks of their own shape, and sample no telemetry and count no FLOPs:
    # of Timing's options compare reads the warm-up and the clock
    add_fields_as_options(
        p,
        Timing,
        skip=(
            "repeats",
            "block_steps",
            "telemetry",
            "flops",
            "phases",
            "peak_tflops",
            "discard_throttled",
        ),
    )
    add_fields_as_options(p, CompareSettings)
    renamed(p, "--min-epochs", "--min-rounds")
    add_launch_options(p, nodes=False)  # the parent talks to both sides: one machine
    p.add_argument(
        "--fail-on-inconclusive", action="store_true", help="exit 1, not 3, when undecided"
    )
    p.add_argument("--json", metavar="PATH", help="every block time, both sides' records, SHAs")
    p.add_argument("--plot", metavar="PATH", help="PNG of each case's blocks in run order")
    p.add_argument(
        "--markdown",
        metavar="PATH",
        help="append the table and verdict as Markdown (e.g. $GITHUB_STEP_SUMMARY)",
    )
    p.set_defaults(func=cmd_compare)


def _cases(args: argparse.Namespace) -> list[StepSpec]:
    from b3core.suites.cases import benchmark_cases, unsupported_reason

    if args.profile:
        given = narrowed_to({name: getattr(args, name) for name in AXES.values()})
        options = CaseOptions(profile=args.profile, device=args.device, **given)
        cases = benchmark_cases(options, mode=args.mode, resolve_models=False)
    else:
        if args.batch_size is None or args.model is None:
            raise B3Error("give --model and --batch-size, or --profile")
        unset = {
            f.name: f.default
            for f in dataclasses.fields(StepSpec)
            if f.name in PROFILE_AXES and getattr(args, f.name) is None
        }
        cases = [spec_from_args(args, **unset)]
    for case in cases:
        reason = unsupported_reason(case)
        if reason:
            raise B3Error(f"{case.label}: {reason}")
    return cases


def _sides(args: argparse.Namespace):
    from b3core.studies.compare.sides import WORKTREE, SideSpec, check_python

    if (args.base is None) != (args.head is None):
        raise B3Error("give both BASE and HEAD revisions, or neither (with --base-python)")
    if args.base is None and not (args.base_python or args.head_python):
        raise B3Error("give BASE and HEAD revisions, --base-python/--head-python, or --saved")
    return [
        SideSpec(
            name,
            revision or WORKTREE,
            check_python(python) if python else sys.executable,
        )
        for name, revision, python in (
            ("base", args.base, args.base_python),
            ("head", args.head, args.head_python),
        )
    ]


def _world(args: argparse.Namespace):
    """Each side as a world of --nproc-per-node ranks, launched by its own worker."""
    from b3core.measuring.distributed import launched
    from b3core.studies.compare.workers import World

    if launched():
        raise B3Error("b3 compare launches each side's ranks itself: run it without torchrun")
    if args.nproc_per_node is None:
        return None
    return World(args.nproc_per_node, args.device)


def cmd_compare(args: argparse.Namespace) -> int:
    from b3core.studies.compare.settings import CompareSettings

    settings = CompareSettings(
        **{
            name: getattr(args, name)
            for name in CompareSettings.__dataclass_fields__
            if hasattr(args, name)
        }
    )
    check_writable(args, "json", "plot", "markdown")
    if args.saved:
        return _compare_saved(args, settings)
    from b3core.measuring.machine import machine_record
    from b3core.reports.compare_report import (
        comparison_table,
        notes,
        outlook_text,
        plot_blocks,
    )
    from b3core.studies.compare.session import compare

    sides, cases, world = _sides(args), _cases(args), _world(args)

    def started(case) -> None:
        if case.spec is cases[0]:
            for side in sides:  # once the sides are known to be good: bad input stays one line
                print(f"{side.name.upper()}: {side.revision}, {side.python}", file=sys.stderr)
        print(
            f"comparing {case.spec.label} (up to {settings.max_time_s:g} s) ...",
            file=sys.stderr,
            flush=True,
        )

    def outlook(case) -> None:
        print(outlook_text(case, settings.threshold), file=sys.stderr, flush=True)

    comparison = compare(sides, cases, settings, world=world, on_start=started, on_outlook=outlook)
    lines = [comparison_table(comparison), *notes(comparison), f"verdict: {comparison.verdict}"]
    print("\n".join(lines))
    _write_outputs(
        args,
        lines,
        f"b3 compare {sides[0].revision} {sides[1].revision}",
        lambda: {**comparison.to_dict(), "parent_machine": machine_record()},
        plot=lambda path: plot_blocks(comparison, path),
    )
    if comparison.interrupted:
        print("b3 compare: interrupted; the cases above are what was measured", file=sys.stderr)
        return 130
    return comparison.exit_code(args.fail_on_inconclusive)


def _compare_saved(args: argparse.Namespace, settings) -> int:
    from b3core.measuring.saved_results import load_benchmark_json
    from b3core.reports.compare_report import saved_table
    from b3core.studies.compare.saved import compare_saved
    from b3core.studies.compare.verdict import exit_code

    if args.base or args.head or args.base_python or args.head_python or args.nproc_per_node:
        raise B3Error("--saved compares two files; give no revisions, interpreters or ranks")
    base, head = (load_benchmark_json(path) for path in args.saved)
    saved = compare_saved(base, head, threshold=settings.threshold, alpha=settings.alpha)
    if not saved.cases:
        raise B3Error("the two files share no b3 case with at least two times on each side")
    lines = [
        saved_table(saved),
        "separate runs: drift between them, and the difference between their two processes, "
        "are not in these intervals, so this is weaker evidence than an interleaved "
        "`b3 compare BASE HEAD`",
    ]
    for what, labels in (
        ("only in BASE", saved.only_base),
        ("only in HEAD", saved.only_head),
        ("fewer than two times, not judged", saved.too_few_times),
    ):
        if labels:
            lines.append(f"{what}: {', '.join(labels)}")
    lines.append(f"verdict: {saved.verdict}")
    print("\n".join(lines))
    _write_outputs(
        args,
        lines,
        f"b3 compare --saved {base.path.name} {head.path.name}",
        lambda: {
            "verdict": saved.verdict,
            **{k: saved.deciding_case.to_dict()[k] for k in ("ratio", "ci95", "p")},
            "interleaved": False,
            "cases": [c.to_dict() for c in saved.cases],
        },
    )
    return exit_code(saved.verdict, args.fail_on_inconclusive)


def _write_outputs(args, lines: list[str], title: str, payload, plot=None) -> None:
    try:
        if args.markdown:
            with open(args.markdown, "a") as summary:
                summary.write("\n\n".join([f"### {title}", *lines]) + "\n\n")
        if args.json:
            write_json(args.json, "compare", payload())
        if plot and args.plot:
            plot(args.plot)
    except OSError as exc:
        raise B3Error(f"cannot write the results: {exc}") from None
