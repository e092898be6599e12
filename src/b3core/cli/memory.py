"""`b3 find-max-batch` and `b3 memory`: the largest batch that fits, and the memory model."""

from __future__ import annotations

import argparse

from b3core.cli.options import (
    add_fields_as_options,
    batch_size_list,
    memory_size,
    positive_int,
    record_args,
    seq_len_list,
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
        "--seq-lens",
        type=seq_len_list,
        help="find the edge at each of these lengths (a sequence model): a curve of L",
    )
    p.add_argument(
        "--nproc-per-node",
        type=positive_int,
        help="probe data-parallel (DDP through torchrun): each probe a fresh world of this many "
        "ranks, so the batch found fits on every rank; --batch sizes are per rank",
    )
    p.add_argument("--json", metavar="PATH")
    p.set_defaults(func=cmd_find_max_batch)

    p = sub.add_parser(
        "memory",
        help="fit the memory model M(B) = fixed + per_sample * B, or for a sequence model over "
        "--seq-lens the surface M(B, L) = a + b·B·L + c·B·L²",
    )
    p.add_argument("--batch-sizes", "--batch_sizes", type=batch_size_list, default=[8, 16, 32, 64])
    p.add_argument(
        "--seq-lens",
        type=seq_len_list,
        help="sequence lengths to probe at every batch size (a sequence model): fits the "
        "memory surface instead of the line",
    )
    add_fields_as_options(p, StepSpec, skip=NOT_OPTIONS, defaults={"model": "simple_cnn"})
    p.add_argument("--memory-budget", type=memory_size, default=None)
    p.add_argument("--isolate", action="store_true", help="each size in a fresh process")
    p.add_argument("--json", metavar="PATH")
    p.set_defaults(func=cmd_memory)


def cmd_find_max_batch(args: argparse.Namespace) -> int:
    from b3core.errors import StepOutOfMemory
    from b3core.measuring.machine import machine_record
    from b3core.measuring.memory import check_budget, default_host_budget
    from b3core.workloads.build import resolve
    from b3core.workloads.devices import resolve_device

    spec = spec_from_args(args, batch_size=args.start, mode="train")
    if args.seq_lens and spec.seq_len is not None:
        raise B3Error("give --seq-len or --seq-lens, not both")
    specs = [spec.replace(seq_len=length) for length in args.seq_lens or [spec.seq_len]]
    # every length within the model's context, before any probe
    tokens = [resolve(each).model_input.tokens_per_sample for each in specs]
    device = resolve_device(spec.device)
    budget = args.memory_budget
    check_budget(device, budget)
    if budget is None and device.type != "cuda":
        budget = default_host_budget()
        print(f"no --memory-budget: using a quarter of available memory, {budget / 2**20:.0f} MiB")
    edges = [
        find_edge(each, tokens_each, args, device, budget)
        for each, tokens_each in zip(specs, tokens)
    ]
    if len(edges) > 1:
        print("the edge over sequence length:")
        for edge in edges:
            print(f"  L = {edge['seq_len']:>6}: {edge['max_batch']:>6} sequences, "
                  f"{edge['max_tokens']:>8} tokens")  # fmt: skip
    if args.json:
        payload = edges[0] if len(edges) == 1 else {"curve": edges}
        write_json(args.json, "find-max", {**payload, "machine": machine_record()})
    return StepOutOfMemory.exit_code if any(e["max_batch"] == 0 for e in edges) else 0


def find_edge(
    spec: StepSpec, tokens: int | None, args: argparse.Namespace, device, budget: int | None
) -> dict:
    """One search, printed as it goes; its record (with a sequence model's length, `tokens`,
    and the tokens at the edge)."""
    from b3core.measuring.memory import device_capacity
    from b3core.studies.finder import find_max_batch

    print(
        f"finding the largest batch for {spec.model} ({spec.precision}) on {device}"
        + (f" within {budget / 2**20:.0f} MiB" if budget else "")
        + (f" at {tokens} tokens per sequence" if tokens else "")
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
        if tokens:
            print(
                f"  {result.max_batch} sequences of {tokens} tokens: "
                f"{result.max_batch * tokens} tokens per micro-batch"
            )
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
    if tokens:
        payload["seq_len"], payload["max_tokens"] = tokens, result.max_batch * tokens
    if result.parameters:
        from b3core.studies.memory_model import analytic_fixed_memory

        analytic = analytic_fixed_memory(result.parameters, spec.optimizer)
        payload["analytic_fixed_memory"] = analytic.to_dict()
        print(
            f"analytic fixed part: {analytic.total_bytes / 2**20:.1f} MiB "
            f"(weights, gradients and {spec.optimizer} state)"
        )
    return payload


def cmd_memory(args: argparse.Namespace) -> int:
    from b3core.studies.finder import fit_memory_model

    spec = spec_from_args(args, batch_size=args.batch_sizes[0], mode="train")
    if args.seq_lens:
        return memory_surface(args, spec)
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


def memory_surface(args: argparse.Namespace, spec: StepSpec) -> int:
    from b3core.measuring.machine import machine_record
    from b3core.studies.memory_surface import TERM_FORMS, measure_memory_surface
    from b3core.workloads.build import resolve

    if spec.seq_len is not None:
        raise B3Error("give --seq-len or --seq-lens, not both")
    resolve(spec.replace(seq_len=max(args.seq_lens)))  # a sequence model, within its context
    print(
        f"memory surface of {spec.model}: {len(args.batch_sizes)} batch sizes x "
        f"{len(args.seq_lens)} lengths",
        flush=True,
    )

    def show(batch: int, seq_len: int, peak: int) -> None:
        print(f"  batch {batch:>5} x length {seq_len:>5}: peak {peak / 2**20:9.1f} MiB", flush=True)

    measured = measure_memory_surface(
        spec, args.batch_sizes, args.seq_lens, isolate=args.isolate, on_probe=show
    )
    surface = measured.surface
    for batch, seq_len in measured.out_of_memory:
        print(f"  batch {batch:>5} x length {seq_len:>5}: out of memory (left out of the fit)")
    print("fit: M(B, L) = a + b·B·L + c·B·L² (least squares; 95% intervals)")
    units = {
        "fixed": ("MiB", 2**20),
        "per_token": ("KiB per token", 2**10),
        "per_token_pair": ("bytes per token x length", 1),
    }
    for term in surface.terms:
        unit, scale = units[term.name]
        print(
            f"  {TERM_FORMS[term.name]:<7} {term.bytes / scale:12.4g} {unit} "
            f"(95% CI {term.low / scale:.4g} to {term.high / scale:.4g})"
        )
    shares = ", ".join(
        f"B={b} L={length}: {share:+.1%}"
        for (b, length), share in zip(surface.points, surface.residual_shares())
    )
    print(f"  residuals (measured - fitted, share of the peak): {shares}")
    if surface.misses_a_probe:
        print(
            f"  note: the surface misses a probe by {surface.max_residual_share:.1%}: at small "
            "batches the peak is often the optimizer's update, flat in B·L; probe larger "
            "batches or lengths"
        )
    largest = max(surface.points, key=lambda p: p[0] * p[1] ** 2)
    if surface.attention_vanishes:
        print(
            f"the B·L² term vanishes: its 95% interval includes 0, so no attention matrix kept "
            f"for the backward pass shows in these peaks (at B={largest[0]}, L={largest[1]} it "
            f"could hold at most {max(0.0, surface.attention_share(*largest, bound='high')):.1%} "
            "of the peak)"
        )
    else:
        print(
            f"the B·L² term is {surface.attention_share(*largest):.1%} of the peak at "
            f"B={largest[0]}, L={largest[1]} (95% CI "
            f"{surface.attention_share(*largest, bound='low'):.1%} to "
            f"{surface.attention_share(*largest, bound='high'):.1%})"
        )
    edges = {}
    if args.memory_budget:
        for seq_len in args.seq_lens:
            edges[seq_len] = surface.max_batch_for(args.memory_budget, seq_len)
            print(
                f"predicted largest batch within {args.memory_budget / 2**20:.0f} MiB at length "
                f"{seq_len}: {edges[seq_len]} sequences ({edges[seq_len] * seq_len} tokens)"
            )
    if args.json:
        payload = {
            "surface": surface.to_dict(),
            "out_of_memory": [list(p) for p in measured.out_of_memory],
            "predicted_max_batch": edges,
            "machine": machine_record(),
        }
        write_json(args.json, "memory-surface", payload)
    return 0
