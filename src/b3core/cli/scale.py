"""`b3 scale`: throughput and scaling efficiency at several world sizes (DDP through torchrun)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from b3core.cli import launch
from b3core.cli.options import (
    add_fields_as_options,
    fields_as_argv,
    spec_from_args,
    timing_from_args,
    write_json,
)
from b3core.spec.formats import upgraded
from b3core.spec.sizes import parse_batch_sizes
from b3core.spec.step import StepSpec, Timing
from b3core.studies.scaling import MODES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scale",
        help="throughput and scaling efficiency at several world sizes (DDP, torchrun)",
    )
    add_fields_as_options(p, StepSpec, required=("batch_size",), defaults={"model": "simple_cnn"})
    add_fields_as_options(p, Timing)
    p.add_argument(
        "--nproc-per-node",
        required=True,
        help="world sizes on this machine, e.g. 1,2,4 (1 is the reference; added if missing)",
    )
    p.add_argument(
        "--scaling",
        choices=MODES,
        default="weak",
        help="weak: --batch-size per rank at every size; strong: --batch-size is the global "
        "batch, split over the ranks",
    )
    p.add_argument("--out", default="b3-scale", help="folder for the runs, table and plot")
    p.set_defaults(func=cmd_scale)


def cmd_scale(args: argparse.Namespace) -> int:
    from b3core.measuring.machine import machine_record
    from b3core.measuring.result import StepResult
    from b3core.reports.scaling_report import plot_scaling, scaling_frame
    from b3core.reports.tables import to_text
    from b3core.studies.scaling import per_rank_batch
    from b3core.workloads.build import resolve

    spec, timing = spec_from_args(args), timing_from_args(args)
    sizes = sorted(set(parse_batch_sizes(args.nproc_per_node)) | {1})
    per_rank = {n: per_rank_batch(spec.batch_size, n, args.scaling) for n in sizes}
    resolve(spec)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for n in sizes:
        path = out / f"world-{n}.json"
        step = spec.replace(batch_size=per_rank[n])
        print(f"world size {n}: per-rank batch {step.batch_size} ...", flush=True)
        argv = ["step", *fields_as_argv(step), *fields_as_argv(timing), "--json", str(path)]
        ranks = argparse.Namespace(nproc_per_node=n, nnodes=1, node_rank=0, rdzv_endpoint=None)
        launch.run_ranks(ranks, [*argv, "--nproc-per-node", str(n)])
        saved = upgraded("step", json.loads(path.read_text()), str(path))
        results.append(StepResult.from_dict(saved["result"]))
    frame = scaling_frame(results)
    title = (
        f"{spec.model} {spec.mode}, {args.scaling} scaling, batch {spec.batch_size}, {spec.device}"
    )
    text = to_text(frame)
    print(f"{title}\n{text}")
    print(
        "efficiency = throughput(N) / (N x throughput(1)); 95% CI: percentile bootstrap over "
        "both runs' timed blocks; each block is the slowest rank's"
    )
    payload = {"title": title, "scaling": args.scaling, "rows": frame.to_dict("records")}
    payload["machine"] = machine_record()
    write_json(out / "scaling.json", "scale", payload)
    (out / "scaling.md").write_text(f"# {title}\n\n{frame.to_markdown(index=False)}\n")
    plot_scaling(frame, out / "scaling.png", title)
    return 0
