from __future__ import annotations

from datetime import UTC, datetime

import pytest

from aitask.core.estimator import (
    K0_BY_CLASS,
    PRIOR_SECONDS,
    Estimator,
    from_api,
    hint,
    observe,
    observe_oom,
    to_api,
)
from aitask.core.types import Learned
from tests.builders import make_class_info, make_demand

CLASSES = {
    "v100": make_class_info("v100", gpu_mem=16, speed=4.0, speed_profiles={"rec": 0.5}),
    "p100": make_class_info("p100", gpu_mem=16, speed=2.0),
    "k80": make_class_info("k80", gpu_mem=12, speed=1.0),
}


@pytest.mark.parametrize(
    ("kwargs", "cls", "seconds", "source"),
    [
        ({"by_class": {"v100": 100, "k80": 400}}, "k80", 400, "hint:secondsByClass"),
        ({"seconds": 1000, "on_class": "v100"}, "v100", 1000, "hint:seconds@v100*speed"),
        ({"seconds": 1000, "on_class": "v100"}, "k80", 4000, "hint:seconds@v100*speed"),
        ({"seconds": 1000, "on_class": "v100"}, "p100", 2000, "hint:seconds@v100*speed"),
        ({"seconds": 1000}, "p100", 500, "hint:seconds*speed"),
        ({"seconds": 1000, "on_class": "gone"}, "p100", 500, "hint:seconds@gone(unknown)*speed"),
        ({"by_class": {"v100": 100}}, "k80", 400, "hint:secondsByClass[v100]*speed"),
        ({}, "k80", PRIOR_SECONDS["training"], "prior(training)"),
        ({}, "p100", PRIOR_SECONDS["training"] / 2, "prior(training)"),
        ({"seconds": 1000, "on_class": "v100", "profile": "rec"}, "k80", 500, "hint:seconds@v100*speed"),
    ],
    ids=[
        "by-class",
        "reference-itself",
        "reference-slower",
        "reference-scaled",
        "speed-1-reference",
        "unknown-reference",
        "derived-from-other-class",
        "prior",
        "prior-scaled",
        "profile-speed",
    ],
)
def test_hint(kwargs: dict[str, object], cls: str, seconds: float, source: str) -> None:
    demand = make_demand(**kwargs)  # type: ignore[arg-type]
    got = hint(demand, CLASSES[cls], CLASSES)
    assert got.seconds == pytest.approx(seconds)
    assert got.source == source


def test_prior_scales_with_work_units() -> None:
    demand = make_demand(work_units=3.0, subtask_type="preprocess")
    assert hint(demand, CLASSES["k80"], CLASSES).seconds == pytest.approx(3 * PRIOR_SECONDS["preprocess"])


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        (0, 100.0),
        (1, 100.0 + (200.0 - 100.0) * 1 / (1 + K0_BY_CLASS)),
        (2, 100.0 + (200.0 - 100.0) * 2 / (2 + K0_BY_CLASS)),
        (100, 100.0 + (200.0 - 100.0) * 100 / (100 + K0_BY_CLASS)),
    ],
    ids=["no-samples", "one-sample-moves-a-third", "two", "many-converge"],
)
def test_learned_blends_with_hint_by_confidence(samples: int, expected: float) -> None:
    learned = {("p", "v100"): Learned(seconds_per_unit=200.0, samples=samples)} if samples else {}
    est = Estimator(CLASSES, learned).estimate(make_demand(by_class={"v100": 100}), "v100")
    assert est.seconds == pytest.approx(expected)
    if samples:
        assert est.source == f"learned(n={samples})+hint:secondsByClass"
        assert est.confidence > 0.6


def test_prior_is_replaced_by_the_first_sample() -> None:
    learned = {("p", "k80"): Learned(seconds_per_unit=50.0, samples=1)}
    est = Estimator(CLASSES, learned).estimate(make_demand(), "k80")
    assert est.seconds == pytest.approx(50.0)
    assert est.source == "learned(n=1)+prior(training)"
    # Learned on another class only: transferred through the prior speeds (k80 is 4x slower).
    other = Estimator(CLASSES, {("p", "v100"): Learned(seconds_per_unit=50.0, samples=1)})
    assert other.estimate(make_demand(), "k80").seconds == pytest.approx(200.0)


def test_transfer_from_other_class_corrects_the_hint() -> None:
    # Twice as long as hinted on v100 -> p100 estimate moves toward twice its hint too.
    learned = {("p", "v100"): Learned(seconds_per_unit=2000.0, samples=10)}
    demand = make_demand(seconds=1000, on_class="v100")
    est = Estimator(CLASSES, learned).estimate(demand, "p100")
    assert est.source.startswith("transfer(n=10)")
    assert 2000 * 1.8 < est.seconds <= 2000 * 2


def test_learned_ignored_for_unknown_class_and_empty_samples() -> None:
    learned = {("p", "gone"): Learned(seconds_per_unit=1.0, samples=5), ("p", "k80"): Learned(0.0, 0)}
    est = Estimator(CLASSES, learned).estimate(make_demand(by_class={"k80": 400}), "k80")
    assert est.seconds == 400
    assert est.source == "hint:secondsByClass"


@pytest.mark.parametrize(
    ("previous", "actual", "rate", "expected_spu", "expected_n"),
    [
        (None, 120.0, 0.3, 60.0, 1),  # work_units = 2
        (Learned(60.0, 1), 100.0, 0.3, 55.0, 2),  # rate max(0.3, 1/2) = 0.5: plain mean
        (Learned(60.0, 9), 100.0, 0.3, 0.7 * 60.0 + 0.3 * 50.0, 10),  # EWMA once 1/(n+1) < rate
        (Learned(0.0, 0, oom_kills=2), 100.0, 0.3, 50.0, 1),
    ],
    ids=["first", "mean-while-few", "ewma", "after-oom-only"],
)
def test_observe(previous: Learned | None, actual: float, rate: float, expected_spu: float, expected_n: int) -> None:
    got = observe(previous, actual_seconds=actual, work_units=2.0, estimated_seconds=80.0, learning_rate=rate,
                  gpu_util=40.0)
    assert got.seconds_per_unit == pytest.approx(expected_spu)
    assert got.samples == expected_n
    assert got.relative_error is not None
    assert got.gpu_util_avg is not None
    if previous is not None:
        assert got.oom_kills == previous.oom_kills


def test_observe_tracks_error_and_utilisation() -> None:
    first = observe(None, actual_seconds=100, work_units=1, estimated_seconds=150, learning_rate=0.5, gpu_util=20)
    assert first.relative_error == pytest.approx(0.5)
    second = observe(first, actual_seconds=100, work_units=1, estimated_seconds=100, learning_rate=0.5, gpu_util=40)
    assert second.relative_error == pytest.approx(0.25)
    assert second.gpu_util_avg == pytest.approx(30)


def test_observe_oom_counts_without_touching_runtime() -> None:
    base = Learned(seconds_per_unit=10.0, samples=3, gpu_util_avg=50.0)
    got = observe_oom(observe_oom(base))
    assert (got.seconds_per_unit, got.samples, got.oom_kills) == (10.0, 3, 2)
    assert observe_oom(None).oom_kills == 1


def test_api_round_trip() -> None:
    value = Learned(seconds_per_unit=12.5, samples=4, relative_error=0.1, gpu_util_avg=77.0, oom_kills=1)
    wire = to_api(value, updated_at=datetime(2026, 1, 1, tzinfo=UTC))
    assert wire.wire()["secondsPerUnit"] == 12.5
    assert from_api(wire) == value


def test_unknown_profile_uses_the_median_of_learned_profiles() -> None:
    learned = {
        ("a", "k80"): Learned(seconds_per_unit=10.0, samples=1),
        ("b", "k80"): Learned(seconds_per_unit=30.0, samples=2),
        ("c", "v100"): Learned(seconds_per_unit=50.0, samples=1),  # 200 s/unit at speed 1.0
    }
    est = Estimator(CLASSES, learned).estimate(make_demand(profile="new", work_units=2.0), "p100")
    assert est.seconds == pytest.approx(30.0 * 2.0 / 2.0)
    assert est.source == "prior(median of 3 learned profiles)"
    # A hint still wins over the empirical prior.
    hinted = Estimator(CLASSES, learned).estimate(make_demand(profile="new", seconds=100.0), "p100")
    assert hinted.source == "hint:seconds*speed"
