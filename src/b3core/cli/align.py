"""`b3 align`: is an aligned batch size faster per sample than B-1 and B+1? Each comparison ends
faster, slower, equivalent within a margin, or inconclusive with what it could not rule out."""

from __future__ import annotations

import argparse

from b3core.cli.options import (
    add_fields_as_options,
    batch_size_list,
    check_writable,
    record_args,
    spec_from_args,
    write_json,
)
from b3core.errors import B3Error
from b3core.spec.step import StepSpec
from b3core.studies.compare.settings import INTERRUPTED


def register(sub: argparse._SubParsersAction) -> None:
    from b3core.studies.align import EXIT_CODES, OUT_OF_MEMORY_EXIT, AlignSettings

    codes = ", ".join(f"{code} {verdict}" for verdict, code in EXIT_CODES.items())
    p = sub.add_parser(
        "align",
        help="are aligned batch sizes (B) faster than B-1 and B+1? decided, with equivalence",
        description=f"Exit codes: {codes} (any), {OUT_OF_MEMORY_EXIT} a size did not fit, "
        f"2 bad input, {INTERRUPTED} interrupted.",
    )
    p.add_argument(
        "--around",
        type=batch_size_list,
        required=True,
        metavar="B[,B2...]",
        help="the aligned sizes, e.g. 128 or 32,64: each is compared with B-1 and B+1",
    )
    add_fields_as_options(p, StepSpec, skip=("batch_size", "mode"), required=("model",))
    add_fields_as_options(p, AlignSettings)
    p.add_argument("--json", metavar="PATH", help="every block's times, the verdicts, the machine")
    p.add_argument("--plot", metavar="PATH", help="PNG of each comparison's decision interval")
    p.set_defaults(func=cmd_align)


def cmd_align(args: argparse.Namespace) -> int:
    from b3core.measuring.distributed import launched
    from b3core.reports.align_report import align_table, closing_sentence, method_line
    from b3core.studies.align import (
        AlignRun,
        AlignSettings,
        comparisons_around,
        fresh_worker,
        run_align,
    )
    from b3core.workloads.models import get_model_spec

    if launched():
        raise B3Error("b3 align starts its own worker processes: run it without torchrun")
    settings = AlignSettings(**record_args(AlignSettings, args))
    pairs = comparisons_around(args.around, settings.multiples_of_8)
    spec = spec_from_args(args, batch_size=pairs[0][0], mode="train")
    get_model_spec(spec.model)  # an unknown model is one line, before any process starts
    check_writable(args, "json", "plot")
    out = AlignRun.around(spec, settings, pairs)
    print(
        f"b3 align: {spec.model} on {spec.device}, sizes {', '.join(map(str, out.sizes))}: "
        f"{len(pairs)} comparisons, up to {settings.max_time_s:g} s",
        flush=True,
    )
    stopped: BaseException | None = None
    try:
        run_align(spec, settings, pairs, fresh_worker, out=out)
    except (KeyboardInterrupt, B3Error) as exc:  # a dead worker, Ctrl-C: keep what was timed
        stopped = exc
    if out.epochs:
        print(align_table(out))
    print(closing_sentence(out))
    print(method_line(out))
    if args.json:
        write_json(args.json, "align", out.to_dict())
    if args.plot and any(c.ci for c in out.comparisons):
        from b3core.reports.align_report import plot_alignment

        plot_alignment(out, args.plot)
    if stopped is not None:
        raise stopped  # main says "interrupted" (130) or the error's one line
    return out.exit_code
