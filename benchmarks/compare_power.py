"""The power of `b3 compare` on this machine: how often an injected slowdown is flagged, how often
an unchanged comparison (HEAD against HEAD) is, and whether the estimates centre on the truth.

    python benchmarks/compare_power.py --model resnet18 --batch-size 16 --image-size 96 \\
        --slowdown 0.05 --runs 10 --out docs/results/vm-cpu/compare-power-resnet18

It builds a throwaway user project (b3core.studies.compare.slowed_project) whose HEAD commit
makes the model do more device work: as many extra tensor operations as make the step
--slowdown slower, measured first in one process (the injected effect, with no process effect).
Then it runs `b3 compare HEAD~1 HEAD` and `b3 compare HEAD HEAD` --runs times each, alternating,
with b3's defaults, so that the machine's drift hits both kinds alike. One comparison at a time:
two would time each other's load. Writes OUT.json (every run) and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from b3core.measuring.machine import machine_record
from b3core.spec.step import PRECISIONS, StepSpec
from b3core.studies.compare.slowed_project import FACTORY, calibrate, slowed_project


def wait_while(pause: Path | None) -> None:
    """Other work on this machine runs between comparisons, never during one: it creates
    `pause`, waits for the comparison under way to end, and removes it when done."""
    while pause is not None and pause.exists():
        time.sleep(2)


def run_compare(repo: Path, base: str, head: str, case: list[str], out: Path) -> dict:
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "b3core.cli", "compare", base, head, *case, "--json", str(out)],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - began
    if proc.returncode not in (0, 1, 3):
        raise SystemExit(f"b3 compare failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
    record = json.loads(out.read_text())
    case_record = record["cases"][0]
    estimate = case_record["estimate"] or {}
    return {
        "verdict": record["verdict"],
        "exit_code": proc.returncode,
        "ratio": record["ratio"],
        "ci95_low": record["ci95"][0] if record["ci95"] else None,
        "ci95_high": record["ci95"][1] if record["ci95"] else None,
        "decision_low": (estimate.get("decision_ci") or [None])[0],
        "p": record["p"],
        "detectable": estimate.get("detectable_slowdown"),
        "epochs": case_record["epochs"],
        "pairs": case_record["pairs"],
        "wall_s": wall,
    }


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.assign(log_ratio=np.log(frame.ratio))
    return frame.groupby("kind").agg(
        runs=("verdict", "size"),
        regression=("verdict", lambda v: int((v == "regression").sum())),
        no_regression=("verdict", lambda v: int((v == "no regression").sum())),
        inconclusive=("verdict", lambda v: int((v == "inconclusive").sum())),
        faster=("verdict", lambda v: int((v == "faster").sum())),
        mean_ratio=("log_ratio", lambda v: math.exp(v.mean())),
        sd_log_ratio=("log_ratio", "std"),
        median_epochs=("epochs", "median"),
        max_wall_s=("wall_s", "max"),
        median_wall_s=("wall_s", "median"),
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18", help="any model of `b3 models`")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=96)
    p.add_argument("--slowdown", type=float, default=0.05, help="the fraction to inject")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--ballast", type=int, default=128, help="side of the extra operations' matrix")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--compare-args", default="", help="more options for b3 compare")
    p.add_argument("--out", required=True, help="path stem: writes OUT.json and OUT.md")
    p.add_argument(
        "--pause-file",
        type=Path,
        help="before each comparison, wait while this file exists (other work between runs)",
    )
    args = p.parse_args()
    case = [
        *("--model", FACTORY, "--batch-size", str(args.batch_size)),
        *("--image-size", str(args.image_size), "--device", args.device),
        *("--precision", args.precision, *args.compare_args.split()),
    ]
    spec = StepSpec(
        model=FACTORY,
        batch_size=args.batch_size,
        image_size=args.image_size,
        precision=args.precision,
        device=args.device,
    )
    out = Path(args.out)
    runs = []
    with tempfile.TemporaryDirectory(prefix="b3-power-") as tmp:
        shape = {"model": args.model, "image_size": args.image_size, "ballast": args.ballast}
        repo = slowed_project(Path(tmp) / "plain", 0, **shape)
        injected = calibrate(spec, args.slowdown, repo)
        print(
            f"{injected.extra_ops} extra operations: the step {injected.ratio:.4f}x "
            f"({injected.ci95[0]:.4f} to {injected.ci95[1]:.4f}) in one process",
            flush=True,
        )
        repo = slowed_project(Path(tmp) / "repo", injected.extra_ops, **shape)
        for i in range(args.runs):
            for kind, base in (("slowed", "HEAD~1"), ("unchanged", "HEAD")):
                wait_while(args.pause_file)
                row = run_compare(repo, base, "HEAD", case, Path(tmp) / "compare.json")
                runs.append({"run": i, "kind": kind, **row})
                print(
                    f"{i} {kind}: {row['verdict']} ratio {row['ratio']:.4f} "
                    f"({row['epochs']} epochs) in {row['wall_s']:.0f} s",
                    flush=True,
                )
    frame = pd.DataFrame(runs)
    summary = summary_table(frame)
    slowed = np.log(frame[frame.kind == "slowed"].ratio)
    bias = {
        "injected_log_ratio": math.log(injected.ratio),
        "mean_estimated_log_ratio": float(slowed.mean()),
        "se": float(slowed.std(ddof=1) / math.sqrt(len(slowed))) if len(slowed) > 1 else None,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "settings": {k: str(v) for k, v in vars(args).items() if k != "pause_file"},
                "injected_in_one_process": injected.to_dict(),
                "estimate_against_injected": bias,
                "machine": machine_record(),
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    title = (
        f"# b3 compare's power: {args.model} bs{args.batch_size} img{args.image_size} "
        f"{args.precision} {args.device}, +{args.slowdown:.0%} of device work injected\n\n"
        f"`{' '.join(sys.argv)}`\n\n"
    )
    out.with_suffix(".md").write_text(
        title
        + f"Injected: {injected.extra_ops} extra {args.ballast}x{args.ballast} matrix products "
        f"a forward pass; in one process (plain and slowed steps alternating on one model) the "
        f"step took {injected.ratio:.4f}x (95% CI {injected.ci95[0]:.4f} to "
        f"{injected.ci95[1]:.4f}) as long.\n\n"
        f"Mean estimate of the slowed runs: {math.exp(bias['mean_estimated_log_ratio']):.4f}x "
        f"(SE of the mean log ratio {bias['se'] or float('nan'):.4f}), against the injected "
        f"{injected.ratio:.4f}x.\n\n"
        + summary.reset_index().to_markdown(index=False, floatfmt=".4f")
        + "\n\nEvery run:\n\n"
        + frame.to_markdown(index=False, floatfmt=".4f")
        + "\n"
    )
    print(summary.to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
