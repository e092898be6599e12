"""Is `b3 plan` right? Its plan for a global batch within a budget, then three checks apart from
it: every candidate it calls feasible runs within the budget; a longer interleaved run of the
candidates it timed (every pair compared) finds its choice the fastest, or equivalent to the
fastest; and activation checkpointing's cost at one micro-batch, against the folklore's 30%.

    python benchmarks/plan_check.py --out docs/results/vm-cpu/plan-resnet18

Writes OUT.json (the plan's record and every check) and OUT.md. Takes about 15 minutes on the
2-core VM; run it alone (it times).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from b3core.errors import StepOutOfMemory
from b3core.measuring.machine import machine_record
from b3core.measuring.memory import parse_memory_size
from b3core.measuring.runner import measure
from b3core.reports.plan_report import closing_lines, plan_table, plot_plan
from b3core.spec.step import StepSpec, Timing
from b3core.studies.interleaved import (
    Comparison,
    InterleavedRun,
    InterleaveSettings,
    fresh_worker,
    run_interleaved,
)
from b3core.studies.lr_rules import LrRequest
from b3core.studies.plan import Levers, Plan, PlanSettings, run_plan

MiB = 2**20
RUN_ONCE = Timing(repeats=1, warmup=2, block_steps=1, telemetry=False, flops=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--global-batch", type=int, default=256)
    parser.add_argument("--memory-budget", type=parse_memory_size, default=512 * MiB)
    parser.add_argument("--check-time", type=float, default=300.0, help="the longer run's s")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    base = StepSpec(args.model, 1, image_size=args.image_size, device="cpu")
    record: dict = {"machine": machine_record(), "budget_bytes": args.memory_budget}

    began = time.monotonic()
    plan = Plan(base, args.global_batch, 1, args.memory_budget, PlanSettings())
    run_plan(plan, Levers(("fp32",), ("none", "blocks")), fresh_worker, print,
             lr=LrRequest(base_lr=base.lr))  # fmt: skip
    record["plan_seconds"] = time.monotonic() - began
    record["plan"] = plan.to_dict()
    table, closing = plan_table(plan), closing_lines(plan)
    print(table, *closing, sep="\n")
    plot_plan(plan, f"{args.out}.png")

    # 1. every candidate called feasible runs within the budget
    feasible = [c for c in plan.candidates if c.feasible]
    runs = []
    for c in feasible:
        try:
            peak = measure(c.spec, RUN_ONCE, memory_budget=args.memory_budget).memory.peak_bytes
        except StepOutOfMemory:
            peak = None
        runs.append({"name": c.name, "peak_bytes": peak, "within_budget": peak is not None})
        print(f"feasible {c.name}: " + (f"{peak / MiB:.0f} MiB" if peak else "OUT OF MEMORY"))
    record["feasible_runs"] = runs

    # 2. a longer interleaved run of the timed candidates, every pair compared
    timed = plan.timed
    pairs = [Comparison(a.name, b.name, 0.02) for i, a in enumerate(timed) for b in timed[i + 1 :]]
    check = InterleavedRun(
        {c.name: c.spec for c in timed},
        InterleaveSettings(max_time_s=args.check_time, epoch_s=1.0, min_epochs=3),
        pairs,
        min_calls_per_block=1,
    )
    run_interleaved(check, fresh_worker)
    chosen = plan.recommended().name
    beaten_by = [
        c.describe()
        for c in check.comparisons
        if (c.first == chosen and c.verdict == "slower")
        or (c.second == chosen and c.verdict == "faster")
    ]
    record["check"] = {**check.to_dict(), "chosen": chosen, "chosen_beaten_by": beaten_by}
    print("check:", *(c.describe() for c in check.comparisons), sep="\n  ")

    # 3. checkpointing's cost at the chosen micro-batch, and its memory prediction
    micro = plan.recommended().spec
    plain, blocks = (micro.replace(activation_checkpointing=p) for p in ("none", "blocks"))
    cost = InterleavedRun(
        {"none": plain, "blocks": blocks},
        InterleaveSettings(max_time_s=150.0, epoch_s=1.0, min_epochs=3),
        [Comparison("none", "blocks", 0.02)],
        min_calls_per_block=1,
    )
    run_interleaved(cost, fresh_worker)
    slowdown = cost.comparisons[0]
    record["checkpointing_cost"] = cost.to_dict()
    memory = {m.lever: m for m in plan.memory}["fp32 ckpt-blocks"]
    predictions = [
        {
            "name": c.name,
            "predicted_bytes": c.predicted_peak,
            "measured_bytes": c.peak_bytes,
            "error": c.predicted_peak / c.peak_bytes - 1,
        }
        for c in plan.candidates
        if c.spec.activation_checkpointing == "blocks" and c.peak_bytes
    ]
    record["checkpointing_memory"] = {"fit": memory.fit.to_dict(), "predictions": predictions}

    Path(f"{args.out}.json").write_text(json.dumps(record, indent=1, default=str))
    lines = [
        f"# b3 plan: {args.model} at {args.image_size} px, global batch {args.global_batch}, "
        f"budget {args.memory_budget / MiB:.0f} MiB",
        "",
        f"`python benchmarks/plan_check.py --out {args.out}` on {record['machine']['cpu']} "
        f"({record['machine']['cpu_count']} cores), torch {record['machine']['torch']}.",
        "",
        f"The plan took **{record['plan_seconds']:.0f} s**.",
        "",
        table,
        "",
        *closing,
        "",
        "## Checks apart from the plan",
        "",
        f"- Every candidate called feasible, run once with its accumulation under the budget: "
        f"{sum(r['within_budget'] for r in runs)} of {len(runs)} within it.",
        f"- A longer interleaved run ({check.epochs} fresh processes, {check.elapsed_s:.0f} s, "
        f"every pair of the {len(timed)} timed candidates): the plan's choice {chosen} is "
        + ("beaten by none." if not beaten_by else "beaten: " + "; ".join(beaten_by) + "."),
        *(f"  - {c.describe()}" for c in check.comparisons),
        f"- Activation checkpointing (blocks) at {micro.batch_size}x{micro.accumulation_steps}, "
        f"interleaved over {cost.epochs} fresh processes: none against blocks, "
        f"{slowdown.describe()}. The folklore says about 30% slower.",
        "- Its memory, predicted by the blocks lever's line (two probes) against the measured "
        "peak: "
        + "; ".join(
            f"{p['name']} {p['predicted_bytes'] / MiB:.0f} MiB predicted, "
            f"{p['measured_bytes'] / MiB:.0f} measured ({p['error']:+.1%})"
            for p in predictions
        )
        + ".",
    ]
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}.json, {args.out}.md, {args.out}.png")


if __name__ == "__main__":
    main()
