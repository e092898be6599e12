"""The power of `b3 compare` on this machine: how often an injected slowdown is flagged, and how
often an unchanged comparison (HEAD against HEAD) is.

    python benchmarks/compare_power.py --model mobilenet_v3_small --image-size 64 \\
        --batch-size 32 --slowdown 0.05 --runs 10 --out docs/results/vm-cpu/compare-power

It builds a throwaway repository whose HEAD slows the training step by --slowdown
(b3core.studies.compare.power), then runs `b3 compare HEAD~1 HEAD` and `b3 compare HEAD HEAD`
--runs times each, alternating, so that the machine's drift hits both kinds alike. One
comparison at a time: two would time each other's load. Writes OUT.json (every run) and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from b3core.measuring.machine import machine_record
from b3core.studies.compare.power import slowed_repository


def run_compare(repo: Path, base: str, head: str, case: list[str], out: Path) -> dict:
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "b3core.cli", "compare", base, head, *case, "--json", str(out)],
        cwd=repo,
        capture_output=True,
        text=True,
        # the parent runs the repository's copy too: edits to the checkout cannot leak in
        env={**os.environ, "PYTHONPATH": str(repo / "src")},
    )
    wall = time.monotonic() - began
    if proc.returncode not in (0, 1, 3):
        raise SystemExit(f"b3 compare failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
    record = json.loads(out.read_text())
    case_record = record["cases"][0]
    return {
        "verdict": record["verdict"],
        "exit_code": proc.returncode,
        "ratio": record["ratio"],
        "ci95_low": record["ci95"][0] if record["ci95"] else None,
        "ci95_high": record["ci95"][1] if record["ci95"] else None,
        "p": record["p"],
        "epochs": case_record["epochs"],
        "pairs": case_record["pairs"],
        "wall_s": wall,
    }


def calibrate(model: str, batch_size: int, image_size: int, fraction: float, pairs: int = 40):
    """The injected slowdown's true size, in one process (no process effect): blocks of the
    plain step and of the slowed step (the same busy wait as the throwaway commit), alternating
    in a balanced order. Returns the median of the pairs' ratios and its 95% bootstrap CI."""
    import statistics

    from b3core.measuring.clocks import time_block
    from b3core.measuring.runner import prepare
    from b3core.measuring.stats import paired_ratio
    from b3core.spec.step import StepSpec
    from b3core.workloads.training import Trainer

    spec = StepSpec(model=model, batch_size=batch_size, image_size=image_size or None, device="cpu")
    ready = prepare(spec, warmup=5)
    plain = Trainer.step

    def slowed(self, micro_batches):
        began = time.perf_counter()
        loss = plain(self, micro_batches)
        until = time.perf_counter() + fraction * (time.perf_counter() - began)
        while time.perf_counter() < until:
            pass
        return loss

    def block(step) -> float:
        Trainer.step = step
        try:
            return statistics.median(time_block(ready.call, ready.device) for _ in range(5))
        finally:
            Trainer.step = plain

    ratios = []
    for i in range(pairs):
        if i % 2:
            slow, fast = block(slowed), block(plain)
        else:
            fast, slow = block(plain), block(slowed)
        ratios.append(slow / fast)
    return paired_ratio(ratios, [1.0] * len(ratios))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mobilenet_v3_small")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=64, help="0: the model's own")
    p.add_argument("--slowdown", type=float, default=0.05)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--max-time", type=float, default=None, help="b3 compare's --max-time")
    p.add_argument("--out", required=True, help="path stem: writes OUT.json and OUT.md")
    p.add_argument(
        "--append", action="store_true", help="add these runs to OUT.json's (same settings)"
    )
    args = p.parse_args()
    case = ["--model", args.model, "--batch-size", str(args.batch_size), "--device", "cpu"]
    if args.image_size:
        case += ["--image-size", str(args.image_size)]
    if args.max_time:
        case += ["--max-time", str(args.max_time)]
    injected = calibrate(args.model, args.batch_size, args.image_size, args.slowdown)
    print(
        f"the injected slowdown in one process: {injected[0]:.3f} "
        f"({injected[1]:.3f} to {injected[2]:.3f})",
        flush=True,
    )
    out = Path(args.out)
    runs = []
    if args.append:
        runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    first = 1 + max((r["run"] for r in runs), default=-1)
    with tempfile.TemporaryDirectory(prefix="b3-power-") as tmp:
        repo = slowed_repository(Path(tmp) / "repo", args.slowdown)
        for i in range(first, first + args.runs):
            for kind, base in (("slowed", "HEAD~1"), ("unchanged", "HEAD")):
                row = run_compare(repo, base, "HEAD", case, Path(tmp) / "compare.json")
                runs.append({"run": i, "kind": kind, **row})
                print(
                    f"{i} {kind}: {row['verdict']} ratio {row['ratio']:.3f} in "
                    f"{row['wall_s']:.0f} s",
                    flush=True,
                )
    frame = pd.DataFrame(runs)
    summary = frame.groupby("kind").agg(
        runs=("verdict", "size"),
        flagged=("verdict", lambda v: int((v == "regression").sum())),
        no_regression=("verdict", lambda v: int((v == "no regression").sum())),
        inconclusive=("verdict", lambda v: int((v == "inconclusive").sum())),
        faster=("verdict", lambda v: int((v == "faster").sum())),
        median_ratio=("ratio", "median"),
        max_wall_s=("wall_s", "max"),
        median_wall_s=("wall_s", "median"),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "append", "runs")}
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "settings": settings,
                "injected_in_one_process": dict(zip(("ratio", "ci95_low", "ci95_high"), injected)),
                "machine": machine_record(),
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    title = (
        f"# b3 compare's power: {args.model} bs{args.batch_size} "
        f"img{args.image_size or 'default'} fp32 cpu, "
        f"+{args.slowdown:.0%} injected\n\n"
    )
    out.with_suffix(".md").write_text(
        title + f"The injected busy wait, measured in one process (no process effect), alternating "
        f"plain and slowed blocks: {injected[0]:.3f} (95% CI {injected[1]:.3f} to "
        f"{injected[2]:.3f}).\n\n"
        + summary.reset_index().to_markdown(index=False, floatfmt=".3f")
        + "\n\nEvery run:\n\n"
        + frame.to_markdown(index=False, floatfmt=".3f")
        + "\n"
    )
    print(summary.to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
