"""Runtime estimates T(s, k) per (workload profile, executor class), and learning them online.

Where an estimate comes from, in the order it is trusted:

1. **learned** on this class: ``seconds_per_unit * work_units`` from ``samples`` finished
   attempts (``ExecutorClass.status.learned[profile]``);
2. **transfer** from the same profile learned on *other* classes: the ratio actual/hint seen
   there corrects this class's hint (a job that was twice as long as hinted on a V100 is
   probably twice as long as hinted on a P100 too);
3. the user's **hint**: ``estimate.secondsByClass[k]``; else ``estimate.seconds`` on
   ``onClass`` scaled by the classes' prior speed, ``T(k) = seconds * speed(ref) / speed(k)``
   (reference speed 1.0 without ``onClass``); else ``secondsByClass`` of another class scaled
   the same way;
4. the **prior**: once other profiles have been learned, the median over them of the learned
   seconds per unit at speed 1.0, times ``work_units / speed(k)``; before anything is learned,
   the documented ``PRIOR_SECONDS[type] * work_units / speed(k)``. A guess, so that a sub-task
   without any hint still gets placed and then learned.

Learned values are blended with what lies below them by confidence: weight ``n / (n + k0)``
where ``k0`` (in samples) says how much the lower source is worth. A per-class hint is worth
two samples, so one noisy run moves the estimate by a third, not all the way; the prior is
worth nothing once there is a sample (it is a guess by type, not a statement about the job).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from aitask.api import v1alpha1 as api
from aitask.core.types import ClassInfo, Demand, Learned

#: Runtime at speed 1.0 per unit of work when nothing better is known, by sub-task type
#: (``api.SUBTASK_TYPE_DEFAULTS``); a type string the API does not know gets the custom one.
PRIOR_SECONDS: Mapping[str, float] = {t.value: d.prior_seconds for t, d in api.SUBTASK_TYPE_DEFAULTS.items()}
PRIOR_DEFAULT_SECONDS = api.SUBTASK_TYPE_DEFAULTS[api.SubtaskType.CUSTOM].prior_seconds

#: What each source is worth, in samples (k0 of the blending weight n / (n + k0)).
K0_BY_CLASS = 2.0  # secondsByClass[k], or seconds on onClass == k
K0_SCALED = 1.0  # seconds on a reference class scaled by prior speeds
K0_DERIVED = 0.5  # secondsByClass of another class scaled by prior speeds
K0_PRIOR = 0.0  # PRIOR_SECONDS: a guess, replaced by the first sample

#: Confidence (0..1) reported for each source before any sample.
_CONFIDENCE = {K0_BY_CLASS: 0.6, K0_SCALED: 0.4, K0_DERIVED: 0.3, K0_PRIOR: 0.0}


@dataclass(frozen=True)
class Estimate:
    """A runtime estimate with where it came from (for status and `aitask plan`)."""

    seconds: float
    source: str
    confidence: float  # 0 (a guess) .. 1 (many consistent samples)


@dataclass(frozen=True)
class Hint:
    """The pre-learning value for one (demand, class) and what it is worth in samples."""

    seconds: float
    source: str
    k0: float


def hint(demand: Demand, cls: ClassInfo, classes: Mapping[str, ClassInfo]) -> Hint:
    """The runtime to assume on ``cls`` before anything is learned, and its worth.

    Kept apart from learning so that the simulator can use it as the truth when a
    workload gives no per-class runtime, and `aitask plan` can show it.
    """
    by_class = demand.estimate_by_class
    if cls.name in by_class:
        return Hint(float(by_class[cls.name]), "hint:secondsByClass", K0_BY_CLASS)
    speed = cls.speed(demand.profile)
    if demand.estimate_seconds is not None:
        ref_name = demand.estimate_on_class
        if ref_name is None:
            return Hint(demand.estimate_seconds / speed, "hint:seconds*speed", K0_SCALED)
        ref = classes.get(ref_name)
        if ref is not None:
            k0 = K0_BY_CLASS if ref_name == cls.name else K0_SCALED
            seconds = demand.estimate_seconds * ref.speed(demand.profile) / speed
            return Hint(seconds, f"hint:seconds@{ref_name}*speed", k0)
        # An unknown reference class (deleted, or a typo) counts as speed 1.0.
        return Hint(demand.estimate_seconds / speed, f"hint:seconds@{ref_name}(unknown)*speed", K0_SCALED)
    for ref_name in sorted(by_class):
        ref = classes.get(ref_name)
        if ref is not None:
            seconds = by_class[ref_name] * ref.speed(demand.profile) / speed
            return Hint(seconds, f"hint:secondsByClass[{ref_name}]*speed", K0_DERIVED)
    prior = PRIOR_SECONDS.get(demand.subtask_type, PRIOR_DEFAULT_SECONDS)
    return Hint(prior * demand.work_units / speed, f"prior({demand.subtask_type})", K0_PRIOR)


class Estimator:
    """Estimates for one scheduling cycle; build once per snapshot, ask per (demand, class).

    It indexes the learned table by profile once so that the cross-class transfer does
    not rescan every class for every demand.
    """

    def __init__(self, classes: Mapping[str, ClassInfo], learned: Mapping[tuple[str, str], Learned]) -> None:
        self.classes = classes
        self.learned = learned
        self._by_profile: dict[str, list[tuple[str, Learned]]] = {}
        for (profile, class_name), value in learned.items():
            if value.samples > 0 and value.seconds_per_unit > 0 and class_name in classes:
                self._by_profile.setdefault(profile, []).append((class_name, value))
        # The empirical prior: median over learned profiles of seconds per unit at speed 1.0.
        per_profile = []
        for profile, entries in self._by_profile.items():
            total = sum(v.samples for _, v in entries)
            at_unit_speed = sum(v.samples * v.seconds_per_unit * classes[c].speed(profile) for c, v in entries)
            per_profile.append(at_unit_speed / total)
        per_profile.sort()
        self._unit_prior = per_profile[len(per_profile) // 2] if per_profile else None
        self._prior_profiles = len(per_profile)

    def estimate(self, demand: Demand, class_name: str) -> Estimate:
        """T(s, k): the hint corrected by what was learned on k and on the other classes."""
        cls = self.classes[class_name]
        base = hint(demand, cls, self.classes)
        if base.k0 == K0_PRIOR and self._unit_prior is not None and demand.profile not in self._by_profile:
            # A profile never seen, without hints: what other profiles took is a better guess
            # than the per-type constant (same blending weight: the first sample replaces it).
            base = Hint(
                self._unit_prior * demand.work_units / cls.speed(demand.profile),
                f"prior(median of {self._prior_profiles} learned profiles)",
                K0_PRIOR,
            )
        seconds = base.seconds
        confidence = _CONFIDENCE.get(base.k0, 0.0)
        source = base.source
        own: Learned | None = None
        ratio_sum = 0.0
        others = 0
        for other_name, value in self._by_profile.get(demand.profile, ()):
            if other_name == class_name:
                own = value
                continue
            other_hint = hint(demand, self.classes[other_name], self.classes)
            ratio_sum += value.samples * (value.seconds_per_unit * demand.work_units) / other_hint.seconds
            others += value.samples
        if others:
            v = others / (others + base.k0)
            seconds = base.seconds * ((1.0 - v) + v * ratio_sum / others)
            confidence = v * 0.5 + (1.0 - v) * confidence
            source = f"transfer(n={others})+{base.source}"
        if own is not None:
            w = own.samples / (own.samples + base.k0)
            seconds = (1.0 - w) * seconds + w * own.seconds_per_unit * demand.work_units
            confidence = w + (1.0 - w) * confidence
            source = f"learned(n={own.samples})+{base.source}"
        if demand.remaining != 1.0 or demand.switch_seconds:
            # A resumed attempt: what is left of the work, plus the resume overhead (preemption).
            seconds = seconds * demand.remaining + demand.switch_seconds
            source = f"resume({demand.remaining:.0%} left)+{source}"
        return Estimate(seconds=seconds, source=source, confidence=confidence)


def observe(
    previous: Learned | None,
    *,
    actual_seconds: float,
    work_units: float,
    estimated_seconds: float | None,
    learning_rate: float,
    gpu_util: float | None = None,
) -> Learned:
    """Fold one finished attempt into the learned runtime of its (profile, class).

    The rate is ``max(learning_rate, 1 / (n + 1))``: a plain mean while there are few
    samples (so the first run is not diluted by nothing), an exponentially weighted mean
    afterwards (so a changed workload or driver is followed).
    """
    if actual_seconds <= 0 or work_units <= 0:
        return previous if previous is not None else Learned(seconds_per_unit=0.0, samples=0)
    sample = actual_seconds / work_units
    error = abs(estimated_seconds - actual_seconds) / actual_seconds if estimated_seconds else None
    if previous is None or previous.samples <= 0 or previous.seconds_per_unit <= 0:
        return Learned(
            seconds_per_unit=sample,
            samples=1,
            relative_error=error,
            gpu_util_avg=gpu_util,
            oom_kills=previous.oom_kills if previous is not None else 0,
        )
    rate = max(learning_rate, 1.0 / (previous.samples + 1))
    return Learned(
        seconds_per_unit=(1.0 - rate) * previous.seconds_per_unit + rate * sample,
        samples=previous.samples + 1,
        relative_error=_ewma(previous.relative_error, error, rate),
        gpu_util_avg=_ewma(previous.gpu_util_avg, gpu_util, rate),
        oom_kills=previous.oom_kills,
    )


def observe_oom(previous: Learned | None) -> Learned:
    """Count an OOM-killed attempt; its runtime says nothing about the profile's speed."""
    if previous is None:
        return Learned(seconds_per_unit=0.0, samples=0, oom_kills=1)
    return Learned(
        seconds_per_unit=previous.seconds_per_unit,
        samples=previous.samples,
        relative_error=previous.relative_error,
        gpu_util_avg=previous.gpu_util_avg,
        oom_kills=previous.oom_kills + 1,
    )


def _ewma(previous: float | None, sample: float | None, rate: float) -> float | None:
    if sample is None:
        return previous
    if previous is None:
        return sample
    return (1.0 - rate) * previous + rate * sample


def from_api(value: api.Learned) -> Learned:
    """Read a learned entry of ``ExecutorClass.status.learned`` (survives operator restarts)."""
    return Learned(
        seconds_per_unit=value.seconds_per_unit,
        samples=value.samples,
        relative_error=value.relative_error,
        gpu_util_avg=value.gpu_util_avg,
        oom_kills=value.oom_kills,
    )


def to_api(value: Learned, *, updated_at: datetime | None = None) -> api.Learned:
    """The entry to write into ``ExecutorClass.status.learned[profile]``."""
    return api.Learned(
        seconds_per_unit=value.seconds_per_unit,
        samples=value.samples,
        relative_error=value.relative_error,
        gpu_util_avg=value.gpu_util_avg,
        oom_kills=value.oom_kills,
        updated_at=updated_at,
    )
