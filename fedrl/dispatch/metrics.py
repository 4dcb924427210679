"""Dispatch metrics from a platform's running totals (domain.md part B)."""
from __future__ import annotations

import numpy as np

from fedrl.dispatch.types import Totals


def summarize(totals: Totals) -> dict:
    """Revenue, answer/completion/cancellation rates, mean pick-up distance, idle share.

    answer rate = matched / arrived; completion rate = completed / arrived; cancellation rate
    = cancelled / matched; idle share = idle driver time / online driver time. Works on one
    platform's totals (scalars) or stacked ones (sums over the platform axis).
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
