"""b3 against timm's own benchmark script, on the same model and settings, interleaved.

    python benchmarks/timm_side_by_side.py --timm-benchmark PATH/TO/timm/benchmark.py \\
        --model resnet18 --image-size 64 --batch-size 16 --rounds 5 \\
        --out docs/results/vm-cpu/timm-side-by-side

`benchmark.py` lives in timm's repository (pytorch-image-models), not in its wheel. Each round
runs, in a shuffled order and one at a time, three fresh processes: timm's `benchmark.py
--bench train`, `b3 step --model timm/MODEL`, and `b3 step --model torchvision.models:MODEL`
(the same architecture through an import path; timm's resnets are torchvision's). All train
with SGD (momentum 0.9) and cross-entropy on random data of the same shape, 1000 classes; timm
adds weight decay 1e-4. Writes OUT.json (every round) and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from b3core.measuring.machine import machine_record


def run(command: list[str]) -> str:
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{command[1]} failed: {proc.stderr.strip()[-400:]}")
    return proc.stdout


def timm_rate(args, scratch: Path) -> float:
    out = scratch / "timm.json"
    run(
        [sys.executable, args.timm_benchmark, "--device", "cpu", "--model", args.model,
         "--bench", "train", "-b", str(args.batch_size), "--img-size", str(args.image_size),
         "--results-file", str(out), "--results-format", "json"]
    )  # fmt: skip
    return float(json.loads(out.read_text())["train_samples_per_sec"])


def b3_rate(args, scratch: Path, model: str) -> float:
    out = scratch / "b3.json"
    run(
        [sys.executable, "-m", "b3core.cli", "step", "--model", model, "--device", "cpu",
         "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
         "--num-classes", "1000", "--optimizer", "sgd", "--json", str(out)]
    )  # fmt: skip
    return float(json.loads(out.read_text())["result"]["throughput"]["samples_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timm-benchmark", required=True, help="timm's benchmark.py")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="OUT.json and OUT.md are written")
    args = parser.parse_args()

    tools = {
        "timm benchmark.py": lambda s: timm_rate(args, s),
        f"b3 timm/{args.model}": lambda s: b3_rate(args, s, f"timm/{args.model}"),
        f"b3 torchvision.models:{args.model}": lambda s: b3_rate(
            args, s, f"torchvision.models:{args.model}"
        ),
    }
    rng, rows = random.Random(args.seed), []
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            for tool in rng.sample(list(tools), len(tools)):
                rate = tools[tool](Path(scratch))
                rows.append({"round": round_, "tool": tool, "samples_per_s": rate})
                print(f"round {round_}: {tool}: {rate:.1f} samples/s", flush=True)
    frame = pd.DataFrame(rows)
    per_round = frame.pivot(index="round", columns="tool", values="samples_per_s")
    reference = per_round["timm benchmark.py"]
    summary = pd.DataFrame(
        {
            "median samples/s": per_round.median(),
            "min": per_round.min(),
            "max": per_round.max(),
            "median ratio to timm (same round)": per_round.div(reference, axis=0).median(),
            "ratio range": per_round.div(reference, axis=0).agg(
                lambda r: f"{r.min():.3f} to {r.max():.3f}"
            ),
        }
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "timm_benchmark"}
    payload = {"settings": settings, "rounds": rows, "machine": machine_record()}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    title = (
        f"{args.model}, train, batch {args.batch_size}, {args.image_size}px, fp32, cpu; "
        f"{args.rounds} interleaved rounds of fresh processes"
    )
    table = summary.to_markdown(floatfmt=".3g")
    out.with_suffix(".md").write_text(f"# b3 and timm's benchmark.py: {title}\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
