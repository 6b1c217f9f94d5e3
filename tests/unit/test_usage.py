"""core.usage.combine: one rule for pods -> attempt and sub-tasks -> task."""

from __future__ import annotations

import pytest

from aitask.core.usage import Sample, combine


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([], None),
        ([(40.0, 80.0, 100.0), (20.0, 90.0, 300.0)], (30.0, 90.0, 300.0)),
        ([(None, 50.0, None), (60.0, None, 10.0)], (60.0, 50.0, 10.0)),
        ([(None, None, None)], (None, None, None)),
    ],
    ids=["nothing", "mean-of-means-max-of-peaks", "unknowns-left-out", "all-unknown"],
)
def test_combine(samples: list[Sample], expected: Sample | None) -> None:
    assert combine(samples) == expected
