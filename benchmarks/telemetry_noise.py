"""How much CPU steal and outside load this machine shows while b3 times, and whether the noisy
rows line up with it.

    python benchmarks/telemetry_noise.py --sweeps 4 --out docs/results/vm-cpu/telemetry/noise

Runs the README's sweep --sweeps times, then once more beside a busy process (a known outside
load), one after another. Every row's dispersion (IQR over median of its timed blocks) is set
against the telemetry of its timed region: Spearman's rank correlation (scipy) over the quiet
sweeps' rows, and the rows that telemetry marked contended. Writes OUT.csv and OUT.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
from scipy import stats

from b3core.measuring.machine import machine_record

CASE = ["--model", "mobilenet_v3_small", "--image-size", "64", "--device", "cpu",
        "--batch-sizes", "15-17,31-33,63-65"]  # fmt: skip
BUSY = "import time\nend = time.time() + 600\nwhile time.time() < end:\n    pass\n"


def sweep(out: Path) -> pd.DataFrame:
    proc = subprocess.run(
        [sys.executable, "-m", "b3core.cli", "sweep", *CASE, "--out", str(out)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"b3 sweep failed: {proc.stderr.strip()[-300:]}")
    return pd.read_csv(out / "sweep.csv")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweeps", type=int, default=4)
    p.add_argument("--out", required=True, help="path stem: writes OUT.csv and OUT.md")
    args = p.parse_args()
    frames = []
    with tempfile.TemporaryDirectory(prefix="b3-noise-") as tmp:
        for i in range(args.sweeps):
            frames.append(sweep(Path(tmp) / f"quiet-{i}").assign(run=f"quiet {i}"))
            print(f"quiet sweep {i} done", flush=True)
        busy = subprocess.Popen([sys.executable, "-c", BUSY])
        try:
            frames.append(sweep(Path(tmp) / "busy").assign(run="beside a busy process"))
        finally:
            busy.kill()
            busy.wait()
    rows = pd.concat(frames, ignore_index=True)
    rows = rows[rows["mode"] == "train"].copy()
    rows["noise_iqr_share"] = rows["step_ms_iqr"] / rows["step_ms_median"]
    columns = ["run", "batch", "step_ms_median", "noise_iqr_share", "steal_share",
               "outside_load_cores", "contended", "notes"]  # fmt: skip
    rows = rows[columns]
    quiet = rows[rows["run"] != "beside a busy process"]
    correlations = {
        signal: stats.spearmanr(quiet["noise_iqr_share"], quiet[signal])
        for signal in ("outside_load_cores", "steal_share")
        if quiet[signal].nunique() > 1
    }
    per_run = rows.groupby("run", sort=False).agg(
        rows=("batch", "size"),
        contended=("contended", "sum"),
        median_noise=("noise_iqr_share", "median"),
        max_noise=("noise_iqr_share", "max"),
        max_steal=("steal_share", "max"),
        median_outside_load=("outside_load_cores", "median"),
        max_outside_load=("outside_load_cores", "max"),
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(out.with_suffix(".csv"), index=False)
    machine = machine_record()
    lines = [
        f"# CPU steal, outside load and noise: {machine['cpu']} ({machine['cpu_count']} cores)",
        "",
        f"`b3 sweep {' '.join(CASE)}`, {args.sweeps} times, then once beside a busy process. "
        "Noise: a row's IQR over its median block time. Outside load: CPU cores busy in other "
        "processes during the row's timed region; steal: the hypervisor's share of CPU time "
        "(/proc/stat).",
        "",
        per_run.reset_index().to_markdown(index=False, floatfmt=".3f"),
        "",
        "Spearman's rank correlation of noise with each signal, over the quiet sweeps' rows:",
        "",
    ]
    for signal, result in correlations.items():
        lines.append(f"- {signal}: rho {result.statistic:+.2f} (p {result.pvalue:.3f})")
    if not correlations:
        lines.append("- none: the signals did not vary across the quiet rows")
    lines += ["", "Every row:", "", rows.to_markdown(index=False, floatfmt=".3f"), ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print(per_run.to_string())
    for signal, result in correlations.items():
        print(f"{signal}: rho {result.statistic:+.2f} (p {result.pvalue:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
