"""Two saved pytest-benchmark runs judged with the same statistics as an interleaved comparison.

Each file's b3 results keep their raw times, so each case gets a ratio, an interval and a
p-value (Welch's t on log step times) rather than a bare threshold. The runs were separate, so
drift between them (another job, a warmer machine) is not in the interval: weaker evidence than
`b3 compare BASE HEAD`, which interleaves the two sides in one job.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from b3core.errors import B3Error
from b3core.measuring.saved_results import ResultSet
from b3core.studies.compare.verdict import (
    Estimate,
    overall_verdict,
    severity,
    unpaired_estimate,
)


@dataclass(frozen=True)
class SavedCase:
    label: str
    base_median_s: float
    head_median_s: float
    estimate: Estimate

    @property
    def verdict(self) -> str:
        return self.estimate.verdict

    def to_dict(self) -> dict:
        return {
            "case": self.label,
            "base_median_s": self.base_median_s,
            "head_median_s": self.head_median_s,
            **self.estimate.to_dict(),
        }


@dataclass(frozen=True)
class SavedComparison:
    cases: tuple[SavedCase, ...]
    only_base: tuple[str, ...]
    only_head: tuple[str, ...]
    too_few_times: tuple[str, ...]  # cases with fewer than two times on a side: not judged

    @property
    def verdict(self) -> str:
        return overall_verdict([c.verdict for c in self.cases])

    @property
    def deciding_case(self) -> SavedCase:
        return min(self.cases, key=lambda c: severity(c.verdict, c.estimate.ratio))


def compare_saved(
    base: ResultSet, head: ResultSet, *, threshold: float, alpha: float
) -> SavedComparison:
    """Each case the two files share, judged at alpha / (cases) so the file's verdict keeps
    alpha. Files from different machines are refused: their ratio would be the machines'."""
    if base.machine_slug != head.machine_slug:
        raise B3Error(
            f"{base.path.name} was measured on {base.machine_slug}, {head.path.name} on "
            f"{head.machine_slug}: compare runs from one machine"
        )
    base_by_label = {r.spec.label: r for r in base.results}
    head_by_label = {r.spec.label: r for r in head.results}
    shared = [label for label in base_by_label if label in head_by_label]
    judged = [
        label
        for label in shared
        if min(len(by[label].measurement.times) for by in (base_by_label, head_by_label)) >= 2
    ]
    cases = []
    for label in judged:
        b, h = base_by_label[label], head_by_label[label]
        base_times, head_times = b.measurement.step_times, h.measurement.step_times
        cases.append(
            SavedCase(
                label,
                statistics.median(base_times),
                statistics.median(head_times),
                unpaired_estimate(
                    base_times, head_times, alpha=alpha / len(judged), threshold=threshold
                ),
            )
        )
    return SavedComparison(
        tuple(cases),
        tuple(sorted(set(base_by_label) - set(head_by_label))),
        tuple(sorted(set(head_by_label) - set(base_by_label))),
        tuple(label for label in shared if label not in judged),
    )
