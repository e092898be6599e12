"""How finely should `b3 align`'s sizes alternate? Blocks of one timed call against blocks of
about half a second (several calls, summarised by their median: the engine's rule before
fd95b32), at epochs of 3 s (b3's default) and of 8 s.

    python benchmarks/align_block_grain.py --out docs/results/vm-cpu/align-block-grain

mobilenet_v3_small at 64 px, around 64 and then around 32, each of the four designs for
--seconds with no interim look (the first would come after more epochs than fit), so every
run takes its whole time. The figure of merit is the standard error of each comparison's mean
log ratio over the epochs, times the square root of the run's seconds: the error a run of one
second would have, so lower is better, and a design's start-ups, cycles and noise all count.
The old blocks are made by a wrapper around the worker, so the engine is the one b3 ships.
One run at a time. Writes OUT.json (every run) and OUT.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd

from b3core.measuring.machine import machine_record
from b3core.spec.step import StepSpec
from b3core.studies.align import (
    AlignSettings,
    comparisons_around,
    fresh_worker,
    run_align,
)
from b3core.studies.compare.interleave import block_shape

NO_INTERIM_LOOK = 10**6  # epochs
DESIGNS = {  # name: (epoch seconds, old blocks)
    "one call, 3 s epochs": (3.0, False),
    "half-second blocks, 3 s epochs": (3.0, True),
    "one call, 8 s epochs": (8.0, False),
    "half-second blocks, 8 s epochs": (8.0, True),
}


class HalfSecondBlocks:
    """A worker whose timed blocks are several calls, as many as compare's blocks hold (the
    rule align's blocks followed), reported as their median (one time)."""

    def __init__(self, worker) -> None:
        self.worker, self.calls = worker, {}

    def ask(self, op: str, **arguments) -> dict:
        key = arguments.get("key")
        if op == "block" and key in self.calls:
            arguments["calls"] = self.calls[key]
            times = self.worker.ask(op, **arguments)["times"]
            return {"times": [statistics.median(times)]}
        reply = self.worker.ask(op, **arguments)
        if op == "prepare":
            self.calls[key] = block_shape(reply["step_s"], "blocked")[1]
        return reply

    def retire(self) -> None:
        self.worker.retire()

    def close(self) -> None:
        self.worker.close()


def one_run(around: int, design: str, seconds: float) -> dict:
    epoch_s, old_blocks = DESIGNS[design]
    spec = StepSpec("mobilenet_v3_small", around, image_size=64, device="cpu")
    settings = AlignSettings(max_time_s=seconds, epoch_s=epoch_s, min_epochs=NO_INTERIM_LOOK)

    def start():
        return HalfSecondBlocks(fresh_worker()) if old_blocks else fresh_worker()

    run = run_align(spec, settings, comparisons_around([around]), start)
    record = {"around": around, "design": design, "epochs": run.epochs, "seconds": run.elapsed_s}
    record["cycles_per_epoch"] = len(run.blocks) / len(run.units) / run.epochs
    for c in run.comparisons:
        logs = np.asarray(c.epoch_log_ratios)
        se = float(logs.std(ddof=1)) / math.sqrt(len(logs))
        record[f"{c.first}/{c.second}"] = {
            "mean_pct": 100 * float(logs.mean()),
            "epoch_sd_pct": 100 * float(logs.std(ddof=1)),
            "se_root_s": 100 * se * math.sqrt(run.elapsed_s),
        }
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=100.0, help="each run's --max-time")
    parser.add_argument("--out", required=True, help="path stem: writes OUT.json and OUT.md")
    args = parser.parse_args()
    runs = []
    for around, design in itertools.product((64, 32), DESIGNS):
        runs.append(one_run(around, design, args.seconds))
        print(json.dumps(runs[-1]), flush=True)
    rows = [
        {"around": r["around"], "design": r["design"], "epochs": r["epochs"],
         "cycles/epoch": round(r["cycles_per_epoch"], 1), "comparison": name,
         "mean %": round(v["mean_pct"], 2), "epoch SD %": round(v["epoch_sd_pct"], 2),
         "SE·√s %": round(v["se_root_s"], 1)}
        for r in runs for name, v in r.items() if "/" in name
    ]  # fmt: skip
    table = pd.DataFrame(rows)
    rms = table.groupby("design", sort=False)["SE·√s %"].apply(lambda x: (x**2).mean() ** 0.5)
    Path(f"{args.out}.json").write_text(
        json.dumps({"machine": machine_record(), "runs": runs}, indent=2) + "\n"
    )
    lines = ["# b3 align: one-call blocks against half-second blocks", ""]
    lines += [f"- {design}: RMS SE·√s {value:.1f}%" for design, value in rms.items()]
    Path(f"{args.out}.md").write_text("\n".join([*lines, "", table.to_markdown(index=False), ""]))


if __name__ == "__main__":
    main()
