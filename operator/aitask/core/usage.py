"""Combining GPU-use samples: one rule for pods -> attempt and sub-tasks -> task."""

from __future__ import annotations

from collections.abc import Iterable

Sample = tuple[float | None, float | None, float | None]  # (average %, peak %, peak memory bytes)


def combine(samples: Iterable[Sample]) -> Sample | None:
    """Mean of the averages, max of the peaks, max of the memory peaks; None without samples.

    A mean of means weighs each pod (or sub-task) equally, which is what "how busy were its
    GPUs" asks; peaks are peaks. Unknown values are left out, not counted as zero.
    """
    rows = list(samples)
    if not rows:
        return None
    avgs = [a for a, _, _ in rows if a is not None]
    peaks = [p for _, p, _ in rows if p is not None]
    mems = [m for _, _, m in rows if m is not None]
    return (
        sum(avgs) / len(avgs) if avgs else None,
        max(peaks) if peaks else None,
        max(mems) if mems else None,
    )
