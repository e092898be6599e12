"""How well b3 models a sequence model's memory on this machine: the surface
M(B, L) = a + b·B·L + c·B·L² fitted from a 3 x 3 grid of probes, its predictions checked at
(B, L) it never probed, and the finder's exact edge within a budget at two lengths.

    python benchmarks/sequence_memory.py --out docs/results/vm-cpu/sequence-memory-gpt_small

Every peak is a full training step's (build, optimizer state and two warm-up steps), measured
as the finder measures it. `--attention math` holds torch's unfused attention for the whole run
(it keeps the B x heads x L x L attention matrix for the backward pass), so that the L² term has
something to find. Writes OUT.json (every probe) and OUT.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

from torch.nn.attention import SDPBackend, sdpa_kernel

from b3core.measuring.machine import machine_record
from b3core.measuring.memory import parse_memory_size
from b3core.spec.sizes import parse_batch_sizes, parse_seq_lens
from b3core.spec.step import StepSpec
from b3core.studies.finder import find_max_batch, training_probe
from b3core.studies.memory_surface import measure_memory_surface

MiB = 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt_small")
    parser.add_argument("--batch-sizes", type=parse_batch_sizes, default=[2, 4, 8])
    parser.add_argument("--seq-lens", type=parse_seq_lens, default=[64, 128, 256])
    parser.add_argument(
        "--unprobed", default="6x192,12x384,3x512", help="BxL points the fit never saw"
    )
    parser.add_argument("--budget", type=parse_memory_size, default=parse_memory_size("1G"))
    parser.add_argument("--edge-lengths", type=parse_seq_lens, default=[128, 512])
    parser.add_argument(
        "--attention", choices=("default", "math"), default="default",
        help="default: torch's choice of kernel; math: the unfused one",
    )  # fmt: skip
    parser.add_argument("--out", required=True, help="path stem: writes OUT.json and OUT.md")
    args = parser.parse_args()
    attention = (
        sdpa_kernel(SDPBackend.MATH) if args.attention == "math" else contextlib.nullcontext()
    )
    with attention:
        record = measure(args)
    Path(f"{args.out}.json").write_text(json.dumps(record, indent=2) + "\n")
    Path(f"{args.out}.md").write_text(markdown(record))


def measure(args: argparse.Namespace) -> dict:
    spec = StepSpec(model=args.model, batch_size=1, device="cpu")

    began = time.monotonic()
    measured = measure_memory_surface(spec, args.batch_sizes, args.seq_lens)
    surface = measured.surface
    fit_s = time.monotonic() - began
    checks = []
    for point in args.unprobed.split(","):
        batch, seq_len = (int(v) for v in point.split("x"))
        peak = training_probe(
            spec.replace(seq_len=seq_len), batch, isolate=False, memory_budget=None
        ).memory.peak_bytes
        predicted = surface.predict(batch, seq_len)
        checks.append(
            {"batch": batch, "seq_len": seq_len, "measured_bytes": peak,
             "predicted_bytes": predicted, "error": (predicted - peak) / peak}
        )  # fmt: skip
        print(f"B={batch} L={seq_len}: measured {peak / MiB:.1f} MiB, predicted "
              f"{predicted / MiB:.1f} MiB ({checks[-1]['error']:+.2%})", flush=True)  # fmt: skip
    edges = []
    for seq_len in args.edge_lengths:
        began = time.monotonic()
        result = find_max_batch(spec.replace(seq_len=seq_len), memory_budget=args.budget)
        fits = {p.batch_size for p in result.probes if p.fits}
        misses = {p.batch_size for p in result.probes if not p.fits}
        edges.append(
            {
                "seq_len": seq_len,
                "max_batch": result.max_batch,
                "max_tokens": result.max_batch * seq_len,
                "exact_edge": result.max_batch in fits and result.max_batch + 1 in misses,
                "surface_prediction": surface.max_batch_for(args.budget, seq_len),
                "probes": [
                    {"batch": p.batch_size, "fits": p.fits, "peak_bytes": p.peak_bytes}
                    for p in result.probes
                ],
                "seconds": time.monotonic() - began,
            }
        )
        print(f"L={seq_len}: largest batch {result.max_batch} ({result.max_batch * seq_len} "
              f"tokens), exact edge {edges[-1]['exact_edge']}, surface predicted "
              f"{edges[-1]['surface_prediction']}", flush=True)  # fmt: skip
    return {
        "model": args.model,
        "attention": args.attention,
        "surface": surface.to_dict(),
        "fit_seconds": fit_s,
        "unprobed": checks,
        "budget_bytes": args.budget,
        "edges": edges,
        "machine": machine_record(),
    }


def markdown(record: dict) -> str:
    surface = record["surface"]
    lines = [
        f"# The memory surface of {record['model']} on this CPU ({record['attention']} attention)",
        "",
    ]
    lines.append(f"Fitted from {len(surface['points'])} probes in {record['fit_seconds']:.0f} s:")
    for term in surface["terms"]:
        lines.append(f"- {term['form']}: {term['bytes']:.6g} (95% CI {term['low']:.6g} to "
                     f"{term['high']:.6g})")  # fmt: skip
    lines.append(f"- the B·L² term vanishes: {surface['attention_vanishes']}")
    worst = max(abs(r) for r in surface["residual_shares"])
    lines += ["", f"Largest residual at a probe: {worst:.2%} of its peak.", ""]
    lines.append("| B | L | measured MiB | predicted MiB | error |")
    lines.append("|---|---|---|---|---|")
    for c in record["unprobed"]:
        lines.append(f"| {c['batch']} | {c['seq_len']} | {c['measured_bytes'] / MiB:.1f} | "
                     f"{c['predicted_bytes'] / MiB:.1f} | {c['error']:+.2%} |")  # fmt: skip
    lines += ["", f"The finder within {record['budget_bytes'] / MiB:.0f} MiB:", ""]
    lines.append("| L | largest batch | tokens | exact edge | surface predicted | probes | s |")
    lines.append("|---|---|---|---|---|---|---|")
    for e in record["edges"]:
        lines.append(f"| {e['seq_len']} | {e['max_batch']} | {e['max_tokens']} | "
                     f"{e['exact_edge']} | {e['surface_prediction']} | {len(e['probes'])} | "
                     f"{e['seconds']:.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
