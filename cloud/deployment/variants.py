"""Which variant of a model version each device is sent (``docs/protocol.md`` §15) — pure.

A version carries every approved precision (its *variant set*). For each device the
chooser applies, in order:

* **C1 exclusion** — a variant the device cannot take is never sent: precision not in its
  ``accepts`` (``precision_not_accepted``), file over its ``max_model_bytes``
  (``model_too_large``; the profile keeps ``max_model_bytes`` ≤ half its RAM, so this is
  also the RAM limit), or a variant whose trial failed on this device (``trial_failed``);
* **C2 pin** — a precision pinned by the device's profile wins if it is eligible (else
  the device gets nothing: ``pinned_precision_unavailable``);
* **C3 measured** — otherwise, when the device's hardware class has timings of this
  version's eligible variants, the lowest median (the median of the class's device
  medians) wins; a tie goes to the smaller file;
* **C4 static** — with nothing measured (or the trials timed out), the static preference
  int8 → dynamic-int8 → float16 → float32, smaller file first (:func:`precision_rank`).

:func:`needs_trial` says which eligible variants a class has not measured yet: the
publisher sends those as ``trial`` manifests first (to a bounded sample of the class) and
chooses afterwards.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from shared.precision import precision_rank

__all__ = [
    "Basis",
    "Choice",
    "Limits",
    "Variant",
    "choose",
    "class_medians",
    "eligible",
    "needs_trial",
    "sample",
]


class Basis(StrEnum):
    """Why a device got the variant it got."""

    PINNED = "pinned"  # C2: its profile pins the precision
    MEASURED = "measured"  # C3: fastest on its hardware class
    STATIC = "static"  # C4: nothing measured (or the trials timed out)
    NONE = "none"  # nothing eligible: the device is sent nothing


@dataclass(frozen=True)
class Variant:
    """One approved artifact of the version (a precision, its file)."""

    precision: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Limits:
    """What one device takes, from its status (``accepts``, ``max_model_bytes``, pin).

    ``None`` means "not advertised": no restriction is assumed.
    """

    accepts: frozenset[str] | None = None
    max_model_bytes: int | None = None
    pin: str | None = None
    failed: frozenset[str] = frozenset()  # precisions whose trial failed on this device


@dataclass(frozen=True)
class Choice:
    """The chooser's decision for one device.

    Attributes:
        variant: What to send (None: nothing eligible, see ``reason``).
        basis: Why (:class:`Basis`).
        reason: The refusal code when ``variant`` is None.
        median_us: The class median of the chosen variant (``measured`` only).
        excluded: Precision → why it is never sent to this device (C1).
        medians: Precision → class median, for every measured eligible variant.
        note: Extra context for the report (e.g. ``trial_timeout``).
    """

    variant: Variant | None
    basis: Basis
    reason: str | None = None
    median_us: float | None = None
    excluded: dict[str, str] = field(default_factory=dict)
    medians: dict[str, float] = field(default_factory=dict)
    note: str | None = None

    def explain(self) -> str:
        """One line for an operator: the variant and why."""
        if self.variant is None:
            return f"nothing sent ({self.reason})"
        text = f"{self.variant.precision}: "
        if self.basis is Basis.PINNED:
            text += "pinned by the device profile"
        elif self.basis is Basis.MEASURED:
            text += f"measured fastest on this hardware class (median {self.median_us:.1f} us)"
        else:
            text += "static preference, nothing measured"
            if self.note:
                text += f" ({self.note})"
        if self.excluded:
            text += "; excluded " + ", ".join(
                f"{p} ({r})" for p, r in sorted(self.excluded.items())
            )
        return text

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form for reports."""
        return {
            "precision": self.variant.precision if self.variant else None,
            "basis": str(self.basis),
            "reason": self.reason,
            "median_us": self.median_us,
            "excluded": dict(self.excluded),
            "medians": dict(self.medians),
            "note": self.note,
            "explain": self.explain(),
        }


def eligible(variants: Iterable[Variant], limits: Limits) -> tuple[list[Variant], dict[str, str]]:
    """C1: the variants the device can take, and why each other one is excluded."""
    ok: list[Variant] = []
    excluded: dict[str, str] = {}
    for v in variants:
        if limits.accepts is not None and v.precision not in limits.accepts:
            excluded[v.precision] = "precision_not_accepted"
        elif limits.max_model_bytes is not None and v.size > limits.max_model_bytes:
            excluded[v.precision] = "model_too_large"
        elif v.precision in limits.failed:
            excluded[v.precision] = "trial_failed"
        else:
            ok.append(v)
    return ok, excluded


def class_medians(timings: Iterable[tuple[str, str, float]]) -> dict[str, float]:
    """Precision → median over devices of each device's newest median.

    ``timings`` are ``(device_id, precision, median_us)``; one device's repeated reports of
    a precision count once (the last), so a chatty device cannot outvote its class.
    """
    per_device: dict[tuple[str, str], float] = {}
    for device_id, precision, median_us in timings:
        per_device[(device_id, precision)] = median_us
    by_precision: dict[str, list[float]] = {}
    for (_device, precision), median_us in per_device.items():
        by_precision.setdefault(precision, []).append(median_us)
    return {p: statistics.median(v) for p, v in by_precision.items()}


def _static(candidates: Sequence[Variant]) -> Variant:
    return min(candidates, key=lambda v: (precision_rank(v.precision), v.size))


def choose(
    variants: Sequence[Variant],
    limits: Limits,
    medians: Mapping[str, float],
    *,
    note: str | None = None,
) -> Choice:
    """C1-C4 for one device, given its class's medians (precision → microseconds)."""
    ok, excluded = eligible(variants, limits)
    if not ok:
        reasons = set(excluded.values())
        reason = reasons.pop() if len(reasons) == 1 else "no_eligible_variant"
        return Choice(None, Basis.NONE, reason=reason, excluded=excluded)
    measured = {v.precision: medians[v.precision] for v in ok if v.precision in medians}
    if limits.pin is not None:  # C2
        pinned = [v for v in ok if v.precision == limits.pin]
        if not pinned:
            return Choice(
                None,
                Basis.NONE,
                reason="pinned_precision_unavailable",
                excluded=excluded,
                medians=measured,
            )
        return Choice(pinned[0], Basis.PINNED, excluded=excluded, medians=measured)
    if measured:  # C3
        best = min(
            (v for v in ok if v.precision in measured),
            key=lambda v: (measured[v.precision], v.size),
        )
        return Choice(
            best,
            Basis.MEASURED,
            median_us=measured[best.precision],
            excluded=excluded,
            medians=measured,
        )
    return Choice(_static(ok), Basis.STATIC, excluded=excluded, note=note)  # C4


def needs_trial(
    variants: Sequence[Variant], limits: Limits, medians: Mapping[str, float]
) -> list[Variant]:
    """Eligible variants the class has not measured, for a device the pin does not decide.

    Empty when every eligible variant is measured, when only one is eligible (nothing to
    compare), or when the profile pins a precision.
    """
    ok, _ = eligible(variants, limits)
    if limits.pin is not None or len(ok) < 2:
        return []
    return [v for v in ok if v.precision not in medians]


def sample(device_ids: Iterable[str], size: int) -> list[str]:
    """The devices of one class that run the trials: the first ``size`` by id.

    Deterministic, so a re-run asks the same devices (whose timings are then already held
    and not downloaded again).
    """
    return sorted(set(device_ids))[: max(0, size)]
