"""`b3 find-max-batch` and `b3 memory`: the largest batch that fits, and the memory model."""

from __future__ import annotations

import argparse

from b3core.cli.options import (
    add_fields_as_options,
    batch_size_list,
    memory_size,
    positive_int,
    record_args,
    spec_from_args,
    write_json,
)
from b3core.errors import B3Error
from b3core.spec.finder import FinderSettings
from b3core.spec.step import StepSpec

# What is trained; the batch size is what these commands search or vary.
NOT_OPTIONS = ("batch_size", "mode")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("find-max-batch", help="the largest batch whose training steps fit")
    add_fields_as_options(p, StepSpec, skip=NOT_OPTIONS, defaults={"model": "simple_cnn"})
    p.add_argument(
        "--memory-budget",
        type=memory_size,
        default=None,
        help="cap memory (e.g. 2G); on CPU the default is a quarter of what is free",
    )
    add_fields_as_options(p, FinderSettings)
    p.add_argument(
        "--nproc-per-node",
        type=positive_int,
        help="probe data-parallel (DDP through torchrun): each probe a fresh world of this many "
        "ranks, so the batch found fits on every rank; --batch sizes are per rank",
    )
    p.add_argument("--json", metavar="PATH")
    p.set_defaults(func=cmd_find_max_batch)

    p = sub.add_parser("memory", help="fit the memory model M(B) = fixed + per_sample * B")
    p.add_argument("--batch-sizes", "--batch_sizes", type=batch_size_list, default=[8, 16, 32, 64])
    add_fields_as_options(p, StepSpec, skip=NOT_OPTIONS, defaults={"model": "simple_cnn"})
    p.add_argument("--memory-budget", type=memory_size, default=None)
    p.add_argument("--isolate", action="store_true", help="each size in a fresh process")
    p.add_argument("--json", metavar="PATH")
    p.set_defaults(func=cmd_memory)


def cmd_find_max_batch(args: argparse.Namespace) -> int:
    from b3core.errors import StepOutOfMemory
    from b3core.measuring.machine import machine_record
    from b3core.measuring.memory import check_budget, default_host_budget, device_capacity
    from b3core.studies.finder import find_max_batch
    from b3core.workloads.devices import resolve_device

    spec = spec_from_args(args, batch_size=args.start, mode="train")
    device = resolve_device(spec.device)
    budget = args.memory_budget
    check_budget(device, budget)
    if budget is None and device.type != "cuda":
        budget = default_host_budget()
        print(f"no --memory-budget: using a quarter of available memory, {budget / 2**20:.0f} MiB")
    print(
        f"finding the largest batch for {spec.model} ({spec.precision}) on {device}"
        + (f" within {budget / 2**20:.0f} MiB" if budget else "")
        + f" ({args.search} search)",
        flush=True,
    )

    def show(probe) -> None:
        if probe.fits:
            what = f"fits, peak {probe.peak_bytes / 2**20:.0f} MiB"
            if probe.limit_bytes != probe.peak_bytes:
                what += f" ({probe.limit_bytes / 2**20:.0f} MiB reserved)"
        else:
            what = probe.reason
        print(
            f"  probe batch {probe.batch_size:>6} ({probe.phase}): {what} ({probe.seconds:.1f} s)",
            flush=True,
        )

    result = find_max_batch(
        spec,
        memory_budget=budget,
        on_probe=show,
        nproc_per_node=args.nproc_per_node,
        capacity_bytes=device_capacity(device) if device.type == "cuda" else None,
        **record_args(FinderSettings, args),
    )
    for note in result.notes:
        print(f"  note: {note}")
    if result.max_batch == 0:
        print("not even batch 1 fits")
    else:
        edge = "reached --limit" if result.hit_limit else "exact edge"
        print(f"largest batch that fits: {result.max_batch} ({edge}, {len(result.probes)} probes)")
        print(f"recommended: {result.recommended} (safety margin {args.safety_margin:.0%})")
    fit = result.first_fit
    if fit:
        print(
            f"memory model (first fit, peak tensor memory): M(B) = {fit.fixed_bytes / 2**20:.1f} "
            f"MiB + {fit.per_sample_bytes / 2**20:.4f} MiB x B, from batches "
            f"{list(fit.batch_sizes)}"
            + (
                f"; predicted against the budget less the allocator's slack, "
                f"{result.slack_bytes / 2**20:.0f} MiB"
                if result.slack_bytes
                else ""
            )
        )
        shares = ", ".join(f"{b}: {r:+.1%}" for b, r in sorted(result.residuals.items()))
        print(f"  residuals (measured - fitted, share of the peak): {shares}")
    if result.first_prediction is not None:
        error = result.prediction_error
        print(
            f"predicted largest batch: {result.first_prediction}"
            + (f" (error {error:+.1%} against the edge found)" if error is not None else "")
        )
    payload = result.to_dict()
    if result.parameters:
        from b3core.studies.memory_model import analytic_fixed_memory

        analytic = analytic_fixed_memory(result.parameters, spec.optimizer)
        payload["analytic_fixed_memory"] = analytic.to_dict()
        print(
            f"analytic fixed part: {analytic.total_bytes / 2**20:.1f} MiB "
            f"(weights, gradients and {spec.optimizer} state)"
        )
    if args.json:
        write_json(args.json, "find-max", {**payload, "machine": machine_record()})
    return StepOutOfMemory.exit_code if result.max_batch == 0 else 0


def cmd_memory(args: argparse.Namespace) -> int:
    from b3core.studies.finder import fit_memory_model

    spec = spec_from_args(args, batch_size=args.batch_sizes[0], mode="train")
    fitted = fit_memory_model(spec, args.batch_sizes, memory_budget=None, isolate=args.isolate)
    if fitted is None:
        raise B3Error("too few batch sizes fitted in memory for a fit; try smaller ones")
    fit, analytic = fitted.fit, fitted.analytic
    for size, peak in zip(fit.batch_sizes, fit.peak_bytes):
        print(f"  batch {size:>6}: peak {peak / 2**20:9.1f} MiB")
    print(
        f"fit: M(B) = {fit.fixed_bytes / 2**20:.1f} MiB + {fit.per_sample_bytes / 2**20:.3f} "
        f"MiB x B (R² = {fit.r_squared:.4f})"
    )
    print(
        f"analytic fixed part: {analytic.total_bytes / 2**20:.1f} MiB "
        f"({analytic.parameters:,} parameters: weights, gradients and {spec.optimizer} state)"
    )
    if args.memory_budget:
        predicted = fit.max_batch_for(args.memory_budget)
        stretch = fit.extrapolation_note(predicted)
        print(
            f"predicted largest batch within {args.memory_budget / 2**20:.0f} MiB: {predicted}"
            + (f" ({stretch})" if stretch else "")
        )
    if args.json:
        from b3core.measuring.machine import machine_record

        payload = {
            "fit": fit.to_dict(),
            "analytic": analytic.to_dict(),
            "machine": machine_record(),
        }
        write_json(args.json, "memory", payload)
    return 0
