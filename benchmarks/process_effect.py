"""Where the process effect comes from: `b3 compare`'s own code against itself (HEAD against
HEAD) under each suspect, switched on and off, with fresh worker processes every epoch.

    python benchmarks/process_effect.py --model resnet18 --batch-size 16 --image-size 96 \\
        --epochs 20 --out docs/results/vm-cpu/process-effect

For each condition it runs `--epochs` epochs of the comparison's own machinery (a fresh worker
per side, forked or exec'd, warmed, then `--pairs` pairs of interleaved blocks in a balanced
random order, with no settling pairs, so that the settling curve can be read off), and reports
the between-process spread (the SD of the epochs' log ratios: two processes each), the
within-process spread (pairs about their epoch's mean), the mean (a bias), the effect of
starting first, and the share of the time spent outside timed blocks. One condition at a time:
two would time each other's load. Writes OUT.json (every block) and OUT.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from b3core.measuring.machine import machine_record
from b3core.spec.step import StepSpec
from b3core.studies.compare import interleave
from b3core.studies.compare.records import CaseComparison, Comparison
from b3core.studies.compare.session import SideWorkers
from b3core.studies.compare.settings import CompareSettings
from b3core.studies.compare.sides import WORKTREE, SideSpec, checked_out
from b3core.studies.compare.verdict import hodges_lehmann

# name: (what it tests, settings changed, environment added); b3 0.3's workers: "exec"
DYNAMIC = {"fixed_malloc": False}
CONDITIONS = {
    "exec": ("fresh interpreters, as b3 0.3 ran them", {"workers": "exec", **DYNAMIC}, {}),
    "fork": ("forked by a per-side server, layout shifted", DYNAMIC, {}),
    "fork-same-layout": ("forked, no layout shift", {"shift_layout": False, **DYNAMIC}, {}),
    "one-thread": ("forked, 1 intra-op thread", DYNAMIC, {"OMP_NUM_THREADS": "1"}),
    "passive-wait": (
        "forked, OpenMP threads sleep at once",
        DYNAMIC,
        {"OMP_WAIT_POLICY": "PASSIVE"},
    ),
    "bound-threads": (
        "forked, OpenMP threads bound to cores",
        DYNAMIC,
        {"OMP_PROC_BIND": "TRUE", "OMP_PLACES": "cores"},
    ),
    "thp-tensors": (
        "forked, tensors in transparent huge pages",
        DYNAMIC,
        {"THP_MEM_ALLOC_ENABLE": "1"},
    ),
    "fixed-malloc": (
        "forked, glibc's mmap and trim thresholds fixed (no dynamic threshold)",
        {"fixed_malloc": True},
        {},
    ),
    "fixed-malloc-exec": (
        "fresh interpreters, glibc's thresholds fixed",
        {"workers": "exec", "fixed_malloc": True},
        {},
    ),
    "fixed-malloc-same-layout": (
        "forked, glibc's thresholds fixed, no layout shift",
        {"fixed_malloc": True, "shift_layout": False},
        {},
    ),
}


@contextmanager
def environment(extra: dict[str, str]):
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_condition(spec: StepSpec, name: str, epochs: int, pairs: int, runs: int) -> dict:
    """`epochs` epochs in `runs` comparisons (each with its own servers), HEAD against HEAD."""
    what, changes, env = CONDITIONS[name]
    sides_asked = [SideSpec(side, WORKTREE, sys.executable) for side in ("base", "head")]
    records = []
    began = time.monotonic()
    with environment(env):
        for run in range(runs):
            settings = CompareSettings(epoch_s=0.0, seed=run, **changes)
            result = Comparison(settings)
            case = CaseComparison(spec)
            with checked_out(sides_asked, None) as sides:
                workers = SideWorkers(sides, result, None)
                try:
                    workers.begin_case(spec)
                    rng = interleave.random.Random(run)
                    prepare_orders = interleave.pair_orders(rng)
                    for _ in range(epochs // runs):
                        epoch_began = time.monotonic()
                        live = workers.start_epoch()
                        order = next(prepare_orders)
                        interleave._run_epoch(live, case, settings, rng, began, order)
                        case.round_costs_s.append(time.monotonic() - epoch_began)
                finally:
                    workers.close(grace=5)
            records.append({"run": run, **case.to_dict(), "workers": result.workers})
    return {"condition": name, "what": what, "env": env, "settings": changes, "runs": records}


def pair_table(condition: dict) -> pd.DataFrame:
    rows = []
    for run in condition["runs"]:
        blocks = {}
        for b in run["blocks"]:
            blocks.setdefault(b["pair"], {})[b["side"]] = b
        log = {e: entry for e, entry in enumerate(run["epoch_log"])}
        first_pair = {}
        for pair, sides in sorted(blocks.items()):
            epoch = sides["head"]["epoch"]
            first_pair.setdefault(epoch, pair)
            rows.append(
                {
                    "run": run["run"],
                    "epoch": epoch,
                    "position": pair - first_pair[epoch],
                    "log_ratio": math.log(statistics.median(sides["head"]["times_s"]))
                    - math.log(statistics.median(sides["base"]["times_s"])),
                    "base_s": statistics.median(sides["base"]["times_s"]),
                    "head_s": statistics.median(sides["head"]["times_s"]),
                    "head_started_first": log[epoch]["started"][0] == "head",
                }
            )
    return pd.DataFrame(rows)


def summarise(condition: dict, skip: int) -> dict:
    """The spreads, with the first `skip` pairs of each epoch left out (settling)."""
    pairs = pair_table(condition)
    kept = pairs[pairs.position >= skip]
    epochs = kept.groupby(["run", "epoch"]).agg(
        estimate=("log_ratio", hodges_lehmann), head_first=("head_started_first", "first")
    )
    centred = kept.log_ratio - kept.groupby(["run", "epoch"]).log_ratio.transform("mean")
    n_pairs = kept.groupby(["run", "epoch"]).size().mean()
    runs = epochs.groupby("run").estimate.mean()
    first = epochs[epochs.head_first].estimate.mean() - epochs[~epochs.head_first].estimate.mean()
    timed = sum(
        sum(b["times_s"]) * run["steps_per_call"]
        for run in condition["runs"]
        for b in run["blocks"]
    )
    total = sum(sum(run["round_costs_s"]) for run in condition["runs"])
    # each position's block times relative to its epoch's last pairs: the settling curve
    late = pairs[pairs.position >= pairs.position.max() - 1]
    level = (
        late.groupby(["run", "epoch"]).base_s.mean() + late.groupby(["run", "epoch"]).head_s.mean()
    ) / 2
    pairs = pairs.join(level.rename("level"), on=["run", "epoch"])
    pairs["relative"] = (pairs.base_s + pairs.head_s) / 2 / pairs.level
    return {
        "condition": condition["condition"],
        "what": condition["what"],
        "epochs": len(epochs),
        "between_sd": float(epochs.estimate.std(ddof=1)),
        "between_sd_ci95": _sd_interval(epochs.estimate),
        "within_sd": float(centred.std(ddof=1) * math.sqrt(n_pairs / max(n_pairs - 1, 1))),
        "mean_log_ratio": float(epochs.estimate.mean()),
        "mean_se": float(epochs.estimate.std(ddof=1) / math.sqrt(len(epochs))),
        "runs_sd": float(runs.std(ddof=1)) if len(runs) > 1 else None,
        "first_started_effect": float(first) if not math.isnan(first) else None,
        "startup_share": 1 - timed / total,
        "epoch_s": total / len(epochs),
        "settling": pairs.groupby("position").relative.median().round(3).tolist(),
    }


def _sd_interval(values) -> list[float]:
    from scipy import stats

    n, sd = len(values), float(np.std(values, ddof=1))
    return [
        sd * math.sqrt((n - 1) / stats.chi2.ppf(0.975, n - 1)),
        sd * math.sqrt((n - 1) / stats.chi2.ppf(0.025, n - 1)),
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--image-size", type=int, default=96, help="0: the model's own")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--runs", type=int, default=2, help="comparisons (servers) per condition")
    p.add_argument("--pairs", type=int, default=6, help="timed pairs per epoch")
    p.add_argument("--skip", type=int, default=1, help="pairs left out as settling")
    p.add_argument("--conditions", default=",".join(CONDITIONS))
    p.add_argument("--out", required=True, help="path stem: writes OUT.json and OUT.md")
    args = p.parse_args()
    spec = StepSpec(
        model=args.model,
        batch_size=args.batch_size,
        image_size=args.image_size or None,
        device="cpu",
    )
    interleave.SETTLING_CALLS = 0
    interleave.MIN_EPOCH_PAIRS = args.pairs
    interleave.MIN_CALLS_PER_BLOCK = 3
    out = Path(args.out)
    conditions = []
    for name in args.conditions.split(","):
        began = time.monotonic()
        conditions.append(run_condition(spec, name, args.epochs, args.pairs, args.runs))
        row = summarise(conditions[-1], args.skip)
        print(
            f"{name}: between-process SD {row['between_sd']:.4f}, within {row['within_sd']:.4f}, "
            f"mean {row['mean_log_ratio']:+.4f} in {time.monotonic() - began:.0f} s",
            flush=True,
        )
    summary = pd.DataFrame([summarise(c, args.skip) for c in conditions])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "settings": vars(args),
                "machine": machine_record(),
                "summary": summary.to_dict(orient="records"),
                "conditions": conditions,
            },
            indent=1,
            default=str,
        )
        + "\n"
    )
    shown = summary.drop(columns=["settling", "between_sd_ci95"])
    out.with_suffix(".md").write_text(
        f"# The process effect: {spec.label}, HEAD against HEAD\n\n"
        f"`{' '.join(sys.argv)}`\n\n"
        + shown.to_markdown(index=False, floatfmt=".4f")
        + "\n\nSettling (each pair position's block time over its epoch's last two pairs, "
        "median over epochs):\n\n"
        + "\n".join(f"- {r.condition}: {r.settling}" for r in summary.itertuples())
        + "\n"
    )
    print(shown.to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
