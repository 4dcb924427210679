"""Dispatch metrics from a platform's running totals (domain.md part B)."""
from __future__ import annotations

import numpy as np

from fedrl.dispatch.types import Totals


def summarize(totals: Totals) -> dict:
    """Revenue, answer/completion/cancellation rates, mean pick-up distance, idle share.

    answer rate = matched / arrived; completion rate = completed / arrived; cancellation rate
    = cancelled / matched; idle share = idle driver time / online driver time. Works on one
    platform's totals (scalars) or stacked ones (sums over the platform axis).

    An order counts as completed (and its fare as revenue) when it is dispatched and not
    cancelled, so a trip still running at the end of the window counts in full. ``overflow``
    holds the capacity counters (orders or drivers a fixed-size structure dropped); see
    :func:`overflow_total`.
    """
    t = {k: float(np.sum(np.asarray(getattr(totals, k)))) for k in totals.__dataclass_fields__}
    div = lambda a, b: a / b if b > 0 else 0.0
    return {
        "revenue": t["revenue"],
        "orders": t["arrived"],
        "answer_rate": div(t["matched"], t["arrived"]),
        "completion_rate": div(t["completed"], t["arrived"]),
        "cancellation_rate": div(t["cancelled"], t["matched"]),
        "expired": t["expired"],
        "mean_pickup_m": div(t["pickup_m"], t["completed"]),
        "driver_idle_share": div(t["idle_s"], t["online_s"]),
        "driver_busy_share": div(t["busy_s"], t["online_s"]),
        "overflow": {k: t[k] for k in ("pending_overflow", "bucket_overflow", "row_overflow",
                                       "column_overflow", "calendar_overflow",
                                       "calendar_clamped")},
    }


def optimality_gap(total, exact) -> dict:
    """Per-batch relative gap (exact - total) / exact over batches with exact > 0."""
    total, exact = np.asarray(total, np.float64).ravel(), np.asarray(exact, np.float64).ravel()
    ok = exact > 1e-9
    gap = np.where(ok, (exact - total) / np.where(ok, exact, 1.0), 0.0)[ok]
    if gap.size == 0:
        return {"mean": 0.0, "max": 0.0, "batches": 0}
    return {"mean": float(gap.mean()), "max": float(gap.max()), "batches": int(gap.size)}


def overflow_total(metrics: dict) -> float:
    """Sum of the capacity counters of ``summarize`` output (0 when nothing was dropped):
    orders dropped by a full pending pool, drivers left out of a full bucket cell, matrix rows
    or columns left out, trip ends lost or clamped by the calendar ring."""
    return float(sum(metrics.get("overflow", {}).values()))


def overflow_note(methods: dict, *, names_shown: int = 4) -> str:
    """A loud note on the capacity counters > 0 ('' when none): per counter, the runs where
    it is > 0 (the first ``names_shown`` named), their total and the largest count."""
    runs = {name: m["overflow"] for name, m in methods.items()
            if isinstance(m, dict) and overflow_total(m) > 0}
    if not runs:
        return ""
    parts = []
    for counter in sorted({k for o in runs.values() for k, v in o.items() if v > 0}):
        hit = {name: o[counter] for name, o in runs.items() if o.get(counter, 0) > 0}
        names = ", ".join(list(hit)[:names_shown]) + (", ..." if len(hit) > names_shown else "")
        parts.append(f"{counter} > 0 in {len(hit)} of {len(methods)} runs (total "
                     f"{sum(hit.values()):g}, at most {max(hit.values()):g} per run: {names})")
    return ("**WARNING: capacity overflow** (fixed-size structures dropped orders or drivers, or "
            "ended trips early (calendar_clamped), "
            "so these rows understate what the dispatcher would do; raise the sim.* "
            "capacities, or for driver_overflow / server_*_dropped the fedltd.* ones "
            "(max_residual_drivers, server_rows, server_columns)): " + "; ".join(parts) + ".")
