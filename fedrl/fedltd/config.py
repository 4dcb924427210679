"""Every knob of the Fed-LTD protocol (one frozen, hashable dataclass: a static jit argument).

Fed-LTD: Y. Wang, Y. Tong, Z. Zhou, Z. Ren, Y. Xu, G. Wu, W. Lv, "Fed-LTD: Towards
Cross-Platform Ride Hailing via Federated Learning to Dispatch", KDD 2022. Choices marked
[reconstructed] are this project's reading of the paper (../shared/spec/fedltd.md); each is a
field here so that ablations can change it.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Literal

import numpy as np

from fedrl.config import require, require_in_range, require_positive
from fedrl.fedltd.encoding import LSHConfig
from fedrl.privacy.quantization import FixedPoint


def _is_int(value) -> bool:
    """An integer that is not a bool (``True`` passes ``isinstance(x, int)``)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclasses.dataclass(frozen=True)
class FedLTDConfig:
    """Fed-LTD protocol settings (the local dispatch itself is ``fedrl.dispatch.SimConfig``)."""
    # --- step 2: aggregation of dispatching models (value tables) -------------------------
    share_models: bool = True
    # batches between two aggregations; 300 x 2 s = one 10-minute value slot [reconstructed]
    aggregation_period: int = 300
    # weights of the average: "uniform", or "orders" (orders seen so far, capped at
    # weight_cap and revealed only inside the secure sum, as in secure FedAvg)
    aggregation_weights: Literal["uniform", "orders"] = "orders"
    # weights of the day's first round (batch 0, the pretrained tables, no order seen yet):
    # "equal" (every platform weight_cap: the earlier behaviour) or "training_orders" (the
    # orders each table was pretrained on, scaled so the largest gets weight_cap; revealed
    # only inside the secure sum) [reconstructed]
    first_round_weights: Literal["equal", "training_orders"] = "equal"
    # public cap of the weights (orders); the masked mean encodes min(w / cap, 1) * V, so the
    # cap should be near the orders a platform sees in a day (above it weights saturate)
    weight_cap: float = 1.0e5
    # V_k <- (1 - mix) V_k + mix * aggregate; 1.0 is plain FedAvg [reconstructed]
    mix: float = 1.0
    # "masks": Bonawitz pairwise masks in Z_2^32 (lossless up to fixed point, the paper's
    # choice); "plain": the exact float mean (reference; the server sees every table)
    model_aggregation: Literal["masks", "plain"] = "masks"
    fixed_point: FixedPoint = FixedPoint(scale=2.0 ** 16, bits=32, value_bound=2_048.0)
    # --- step 3: aggregation of dispatching decisions (residual graphs) -------------------
    share_decisions: bool = True
    # shifted square grids of the pick-up radius: on 2-D locations they find about as many
    # near pairs as E2LSH with far fewer false pairs (docs/fedltd_encoding.md) [reconstructed]
    lsh: LSHConfig = LSHConfig(kind="grid", num_tables=4, bucket_width_m=2_000.0)
    # Laplace budget per released order weight; math.inf = no noise ("Fed-LTD w/o DP")
    epsilon_p: float = 1.0
    # order weights are clipped to [weight_lower, weight_upper] before release: Delta is
    # the width (the Laplace sensitivity) [reconstructed: fares here are 8-80 units]
    weight_lower: float = 0.0
    weight_upper: float = 60.0
    # idle drivers a platform sends per batch (first listed ones; overflow is counted). At
    # the quick preset a platform has <= 60 idle drivers in 99 % of batches at 8k drivers/day
    # and <= 134 at 16k (measured), so 128 rarely binds
    max_residual_drivers: int = 128
    # drivers whose LSH codes are re-hashed per batch (those that moved; the rest wait a
    # batch and are not sent meanwhile, counted in driver_overflow)
    code_refresh: int = 32
    # candidate drivers per order kept by the server (most colliding tables first), and the
    # server's matching matrix (rows = orders with a candidate, columns = distinct drivers)
    server_k: int = 8
    server_rows: int = 32
    server_columns: int = 64
    server_matcher: Literal["auction", "hungarian", "greedy"] = "auction"
    # how the server breaks ties among equally colliding candidate drivers of an order and
    # which orders keep a matrix row when more have candidates than server_rows:
    # "random" (a per-batch server key: a random column order with a random start per row,
    # and a random row order before compaction, so no platform is favoured and co-located
    # orders do not all keep the same server_k drivers) or "index" (lower index first, i.e.
    # lower platform, then lower slot: the earlier behaviour) [reconstructed]
    server_tie_break: Literal["random", "index"] = "random"
    # server weight = noisy order weight + collision_bonus * (colliding tables / L): among
    # drivers of one order, prefer those whose location collides in more tables
    # [reconstructed: the server has nothing else to rank them by]
    collision_bonus: float = 0.01
    # the driver's platform checks the true pick-up distance of a server pair and declines
    # it beyond the pick-up radius (an LSH false pair) [reconstructed]
    decline_far_pairs: bool = True
    # the order's platform declines a server pair whose *true* (un-noised) order weight is
    # <= weight_lower: the server thresholds on the noisy weight, so at eps_p = 1 it admits
    # an order of true weight <= 0 with probability 1/2. A local decision, nothing is sent
    # to the server, no privacy cost. Off = the paper's protocol [reconstructed]
    decline_unprofitable: bool = False

    def validate(self, num_platforms: int | None = None) -> None:
        for name in ("share_models", "share_decisions", "decline_far_pairs",
                     "decline_unprofitable"):
            value = getattr(self, name)
            # a string such as "no" is truthy: it would silently switch the step on
            require(isinstance(value, (bool, np.bool_)),
                    f"fedltd.{name} must be a bool, got {value!r}")
        require(_is_int(self.aggregation_period) and self.aggregation_period >= 1,
                f"fedltd.aggregation_period must be an integer >= 1 (batches), got "
                f"{self.aggregation_period!r}")
        require(self.aggregation_weights in ("uniform", "orders"),
                f"fedltd.aggregation_weights must be uniform or orders, got "
                f"{self.aggregation_weights!r}")
        require(self.first_round_weights in ("equal", "training_orders"),
                f"fedltd.first_round_weights must be equal or training_orders, got "
                f"{self.first_round_weights!r}")
        require_positive("fedltd.weight_cap", self.weight_cap)
        require_in_range("fedltd.mix", self.mix, 0.0, 1.0, low_open=True)
        require(self.model_aggregation in ("masks", "plain"),
                f"fedltd.model_aggregation must be masks or plain, got "
                f"{self.model_aggregation!r}")
        self.fixed_point.validate()
        if num_platforms is not None and self.share_models and self.model_aggregation == "masks":
            self.fixed_point.check_parties(num_platforms)
        self.lsh.validate()
        require(isinstance(self.epsilon_p, numbers.Real) and not isinstance(self.epsilon_p, bool)
                and self.epsilon_p > 0,
                f"fedltd.epsilon_p must be > 0 (math.inf for no noise), got {self.epsilon_p!r}")
        for name in ("weight_lower", "weight_upper"):
            value = getattr(self, name)
            # finite: Delta = upper - lower is the Laplace sensitivity (inf would mean inf noise)
            require(isinstance(value, numbers.Real) and not isinstance(value, bool)
                    and math.isfinite(value),
                    f"fedltd.{name} must be a finite number (the clipping range of the released "
                    f"order weights), got {value!r}")
        require(self.weight_upper > self.weight_lower,
                f"fedltd.weight_upper ({self.weight_upper}) must exceed weight_lower "
                f"({self.weight_lower})")
        # the server's matching (like local matching) never assigns a pair of weight <= 0,
        # so orders released in (weight_lower, 0] would be candidates that can never match
        require(self.weight_lower >= 0,
                f"fedltd.weight_lower must be >= 0 (the server matches positive weights "
                f"only), got {self.weight_lower!r}")
        for name in ("max_residual_drivers", "code_refresh", "server_k", "server_rows",
                     "server_columns"):
            value = getattr(self, name)
            require(_is_int(value) and value >= 1,
                    f"fedltd.{name} must be an integer >= 1, got {value!r}")
        require(self.server_tie_break in ("random", "index"),
                f"fedltd.server_tie_break must be random or index, got "
                f"{self.server_tie_break!r}")
        require(self.server_matcher in ("auction", "hungarian", "greedy"),
                f"fedltd.server_matcher must be auction, hungarian or greedy, got "
                f"{self.server_matcher!r}")
        # finite: an infinite bonus makes every server weight inf and nothing gets matched
        require_positive("fedltd.collision_bonus", self.collision_bonus, allow_zero=True)

    @property
    def noisy(self) -> bool:
        return math.isfinite(self.epsilon_p)

    @property
    def laplace_scale(self) -> float:
        """b = Delta / eps_p of the order-weight release (0 without DP)."""
        return (self.weight_upper - self.weight_lower) / self.epsilon_p if self.noisy else 0.0
