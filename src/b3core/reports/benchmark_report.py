"""The files `b3 report` writes from pytest-benchmark JSON: Markdown, CSV, HTML and a plot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from b3core.measuring.saved_results import ResultSet, source_labels
from b3core.reports.plots import plot_batch_curves
from b3core.reports.tables import comparison_frame, display_frame, results_frame, to_text

RESULTS_TITLE = "Results (step time mean ± SD; samples/s = total samples / total time, 95% CI)"


@dataclass(frozen=True)
class WrittenReport:
    markdown: str
    paths: list[Path]


def write_benchmark_report(sets: list[ResultSet], out_dir: str | Path) -> WrittenReport:
    """One results table over all sets; with several, each set's ratio to the first."""
    labels = source_labels(sets)
    frame = pd.concat(
        [results_frame(s.results, source=label) for s, label in zip(sets, labels)],
        ignore_index=True,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = [(RESULTS_TITLE, display_frame(frame))]
    if len(sets) > 1:
        sections.append((f"Samples/s, compared with {labels[0]}", comparison_frame(frame)))
    markdown = "\n\n".join(f"## {title}\n\n{to_text(table)}" for title, table in sections)
    html = "\n".join(f"<h2>{title}</h2>\n{table.to_html(index=False)}" for title, table in sections)
    paths = [out / "report.md", out / "report.csv", out / "report.html"]
    paths[0].write_text(markdown + "\n")
    frame.to_csv(paths[1], index=False)
    paths[2].write_text(f"<html><body>\n{html}\n</body></html>\n")
    paths.append(plot_batch_curves(frame, out / "report.png", title="b3: " + ", ".join(labels)))
    return WrittenReport(markdown, paths)
