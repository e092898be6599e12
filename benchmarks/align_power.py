"""How well `b3 align` answers on this machine: a planted alignment effect, the same model
without it, and a real model.

    python benchmarks/align_power.py --runs 10 --out docs/results/vm-cpu/align-power

A throwaway user module holds two small conv nets on 32x32 images, compute-bound per sample
(an MLP's small-batch products are bound by reading its weights, so that padding cost it
little): `padded` pads its batch to the next multiple of 16 before its layers (so batch 17
costs what 32 costs, and 16 is faster per sample), `plain` does not. Each runs
`b3 align --around 16` --runs times, alternating, with b3's defaults (or --max-time): "16
faster than 17" should be found every time for `padded`, and no "faster" or "slower" claim
at the 2% margin for `plain`. Then mobilenet_v3_small at 64 px, around 32 and around 64,
--real-runs times each (alternating), at --real-margin (the issue's ±3%) and b3's other
defaults: each should be decided within b3's 180 s. One run at a time: two would time each
other's load. Writes OUT.json (every run) and OUT.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from b3core.measuring.machine import machine_record

MODULE = """
import torch
from torch import nn

PAD_TO = 16


class ConvNet(nn.Module):
    def __init__(self, num_classes, pad):
        super().__init__()
        self.pad = pad
        self.layers = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
        )

    def forward(self, x):
        n = x.shape[0]
        if self.pad and n % PAD_TO:
            x = torch.cat([x, x.new_zeros((PAD_TO - n % PAD_TO, *x.shape[1:]))])
        return self.layers(x)[:n]


def padded(num_classes=10, image_size=32):
    return ConvNet(num_classes, pad=True)


def plain(num_classes=10, image_size=32):
    return ConvNet(num_classes, pad=False)
"""


def run_align(folder: Path, model: str, around: str, extra: list[str], out: Path) -> dict:
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "b3core.cli", "align", "--model", model, "--around", around,
         "--device", "cpu", *extra, "--json", str(out)],
        cwd=folder, capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode not in (0, 3):
        raise SystemExit(f"b3 align failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
    record = json.loads(out.read_text())
    return {
        "model": model,
        "around": around,
        "wall_s": time.monotonic() - began,
        "epochs": record["epochs"],
        "exit_code": proc.returncode,
        "comparisons": [
            {k: c[k] for k in ("aligned", "neighbour", "verdict", "ratio", "ci", "decided_at")}
            for c in record["comparisons"]
        ],
        "sentence": next(
            (line for line in proc.stdout.splitlines() if line.startswith("On this device")), ""
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument(
        "--max-time", help="b3 align's --max-time for the padded and plain runs (default: b3's)"
    )
    parser.add_argument("--real-runs", type=int, default=1, help="mobilenet_v3_small's runs")
    parser.add_argument("--real-margin", default="3%", help="mobilenet_v3_small's --margin")
    parser.add_argument("--out", required=True, help="path stem: writes OUT.json and OUT.md")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "align_nets.py").write_text(MODULE)
        for run in range(args.runs):
            for kind in ("padded", "plain"):
                limit = ["--max-time", args.max_time] if args.max_time else []
                record = run_align(
                    folder, f"align_nets:{kind}", "16", ["--image-size", "32", *limit],
                    folder / f"{kind}-{run}.json",
                )  # fmt: skip
                runs.append({"run": run, "kind": kind, **record})
                print(f"{run} {kind}: {record['sentence']} ({record['wall_s']:.0f} s)", flush=True)
        for run, around in itertools.product(range(args.real_runs), ("32", "64")):
            record = run_align(
                folder, "mobilenet_v3_small", around,
                ["--image-size", "64", "--margin", args.real_margin],
                folder / f"mobilenet-{around}-{run}.json",
            )  # fmt: skip
            runs.append({"run": run, "kind": "mobilenet_v3_small", **record})
            print(f"mobilenet_v3_small around {around}: {record['sentence']} "
                  f"({record['wall_s']:.0f} s)", flush=True)  # fmt: skip
    summary = summarise(runs)
    Path(f"{args.out}.json").write_text(
        json.dumps({"machine": machine_record(), "summary": summary, "runs": runs}, indent=2) + "\n"
    )
    Path(f"{args.out}.md").write_text(markdown(summary, runs))


def summarise(runs: list[dict]) -> dict:
    def verdicts(kind: str, neighbour: int) -> list[str]:
        return [
            c["verdict"]
            for r in runs
            if r["kind"] == kind
            for c in r["comparisons"]
            if c["neighbour"] == neighbour
        ]

    def decided(around: str) -> str:
        real = [r for r in runs if r["kind"] == "mobilenet_v3_small" and r["around"] == around]
        done = [r for r in real if r["exit_code"] == 0]
        longest = max((r["wall_s"] for r in real), default=float("nan"))
        return f"{len(done)} of {len(real)} (longest run {longest:.0f} s)"

    padded = [r for r in runs if r["kind"] == "padded"]
    plain = [r for r in runs if r["kind"] == "plain"]
    plain_verdicts = [v for n in (15, 17) for v in verdicts("plain", n)]
    claims = [v for v in plain_verdicts if v in ("faster", "slower")]
    summary = {}
    if padded or plain:
        summary["padded_16_faster_than_17"] = (
            f"{verdicts('padded', 17).count('faster')} of {len(padded)}"
        )
        summary["plain_faster_or_slower_claims"] = f"{len(claims)} of {2 * len(plain)} comparisons"
        summary["plain_equivalent"] = (
            f"{plain_verdicts.count('equivalent')} of {len(plain_verdicts)}"
        )
    if any(r["kind"] == "mobilenet_v3_small" for r in runs):
        summary["mobilenet_v3_small_32_decided"] = decided("32")
        summary["mobilenet_v3_small_64_decided"] = decided("64")
    summary["max_wall_s"] = {
        kind: max(r["wall_s"] for r in runs if r["kind"] == kind)
        for kind in {r["kind"] for r in runs}
    }  # fmt: skip
    return summary


def percent(ratio: float) -> str:
    return f"{100 * (ratio - 1):+.1f}%"


def markdown(summary: dict, runs: list[dict]) -> str:
    rows = [
        {"run": r["run"], "model": r["model"], "around": r["around"], "epochs": r["epochs"],
         "wall s": round(r["wall_s"]), "sentence": r["sentence"],
         "decision intervals": "; ".join(
             f"vs {c['neighbour']}: {percent(c['ci'][0])} to {percent(c['ci'][1])}"
             for c in r["comparisons"] if c["ci"])}
        for r in runs
    ]  # fmt: skip
    lines = ["# b3 align: a planted alignment effect, the same model without it, a real model", ""]
    lines += [f"- {k}: {v}" for k, v in summary.items()]
    return "\n".join([*lines, "", pd.DataFrame(rows).to_markdown(index=False), ""])


if __name__ == "__main__":
    main()
