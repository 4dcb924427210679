"""Configuration and state pytrees of the batched ride-hailing dispatch simulator.

All arrays have fixed capacities with masks (style.md): D drivers of a platform's day, P pending
order slots, a bucket table [cells, S] of idle drivers for the spatial candidate search, and a
calendar ring [H, Sc] of trip ends. Platforms are a leading axis added by ``jax.vmap``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax.numpy as jnp
from flax import struct

from fedrl.config import require, require_in_range, require_positive
from fedrl.matching.auction import DEFAULT_BIDDERS_PER_ROUND

OFFLINE, IDLE, BUSY = 0, 1, 2

# Name of the platform axis when platforms are batched with ``jax.vmap(..., axis_name=...)``.
# Steps that pick a size class (candidate search, matcher) then take the largest class any
# platform of the batch needs (``dispatchers.shared_class``): the index is the same for the
# whole batch and ``lax.switch`` stays a branch. With a per-platform index, vmap turns the
# switch into running every class for every platform (the full 3-platform day 2.5x slower,
# docs/dispatch.md). Each platform still gets its own class's result (``solve_graph``).
PLATFORM_AXIS = "batched_platforms"
# The auction's default bidders per round; see SimConfig.validate.
AUCTION_BIDDERS = DEFAULT_BIDDERS_PER_ROUND


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """Every knob of the simulator and of local dispatch (hashable: a static jit argument).

    Sources: KDD Cup 2020 dispatch setting (2 s batches, 2 km radius, k = 11 nearest drivers,
    cancel(d) = 0.01 exp(ln(20)/2000 d), pick-up speed 3 m/s, orders lost after one batch) and
    Xu et al. (KDD 2018) / Fed-LTD step 1 (10-minute slots, gamma 0.9, alpha 0.025).
    """
    # geometry of the city (metres; see fedrl.data.grid.local_projection)
    width_m: float = 29_728.0
    height_m: float = 33_836.0
    # batching and candidate graph
    batch_s: float = 2.0
    radius_m: float = 2_000.0
    k_nearest: int = 11
    topk_method: Literal["argmin", "top_k", "sort"] = "top_k"
    pickup_speed_ms: float = 3.0
    pickup_road_factor: float = 1.0   # straight-line pick-up distance, as in the KDD Cup code
    # cancellation: cancel(d) = cancel_p0 * exp(ln(cancel_p_ref / cancel_p0) / cancel_ref_m * d)
    cancel_p0: float = 0.01
    cancel_p_ref: float = 0.2
    cancel_ref_m: float = 2_000.0
    # unmatched orders: "one_batch" (KDD Cup) or "exponential" patience with this mean
    patience: Literal["one_batch", "exponential"] = "one_batch"
    patience_mean_s: float = 300.0
    # fixed capacities (per platform)
    max_pending: int = 32
    max_rows: int = 32               # pending orders with candidates per batch (matrix rows)
    max_columns: int = 96            # distinct candidate drivers per batch (matrix columns)
    # Smaller (rows, columns) shapes tried first: the matcher runs on the smallest one that
    # holds the batch (lax.switch), since matcher cost grows steeply with the padded size.
    size_classes: tuple = ((8, 24), (16, 48))
    # Pending-order classes of the candidate search (lax.switch on the number of valid pending
    # orders, like size_classes for the matcher); () searches all max_pending slots.
    candidate_classes: tuple = (8, 16)
    bucket_cell_m: float = 2_000.0   # spatial index cell; >= radius so 3x3 cells suffice
    bucket_slots: int = 96           # idle drivers listed per bucket cell
    calendar_batches: int = 6_000    # ring length in batches (> longest pick-up + trip)
    calendar_slots: int = 48         # trip ends per batch
    # value function (tabular over time slot x hexagon), Fed-LTD step 1
    slot_s: float = 600.0
    value_cell_m: float = 600.0      # hexagon circumradius
    gamma: float = 0.9
    alpha: float = 0.025
    td_online: bool = True           # online TD(0) during the day (learning-to-dispatch only)
    # Discount of an unmatched candidate's TD target: "elapsed" = gamma ** (batch_s / slot_s)
    # (gamma is per slot; a batch is 2 s) or "slot" = gamma per batch (the previous rule, which
    # shrinks V of cells with idle drivers by alpha * 10 % every batch) [see docs/dispatch.md].
    td_idle_discount: Literal["elapsed", "slot"] = "elapsed"
    # Offline evaluation: states (slot, cell) without any trip take the count-weighted mean of
    # visited cells up to this many hexagon rings away (0: they stay 0, i.e. "worthless"), and
    # if still unvisited the slot's count-weighted mean (value_fill_slot_mean) [reconstructed].
    value_fill_rings: int = 2
    value_fill_slot_mean: bool = True
    # Offline evaluation: replace each visited state's mean by the count-weighted mean over the
    # cell and its neighbours, this many times (0: off) [reconstructed].
    value_smooth_rings: int = 1
    # Offline evaluation: driver time between two trips (idle wait + drive to the pick-up), a
    # discount gamma ** (value_gap_s / slot_s) on each trip's target, so that V is the value of
    # an *idle* driver rather than of one whose next trip starts at once (0: trips only, which
    # overestimates V by ~1.5x in the quick city and makes LTD refuse most orders)
    # [reconstructed; measured pick-up + idle time per trip: 10-13 min, docs/dispatch.md].
    value_gap_s: float = 600.0
    # local dispatch
    dispatcher: Literal["nearest", "myopic", "ltd"] = "ltd"
    matcher: Literal["auction", "hungarian", "greedy"] = "auction"
    measure_gap: bool = False        # also solve each batch exactly (hungarian) for the gap
    # Take edges of weight <= 0 too (assignment semantics: most pairs first, then the largest
    # total weight). Off: an order whose advantage is negative is left for a better driver or
    # a later batch, as in a max-weight matching [reconstructed; see docs/dispatch.md].
    match_nonpositive: bool = False

    def validate(self) -> None:
        for name in ("width_m", "height_m", "batch_s", "radius_m", "pickup_speed_ms",
                     "pickup_road_factor", "cancel_ref_m", "patience_mean_s", "bucket_cell_m",
                     "slot_s", "value_cell_m"):
            require_positive(f"sim.{name}", getattr(self, name))
        for name in ("k_nearest", "max_pending", "max_rows", "max_columns", "bucket_slots",
                     "calendar_batches", "calendar_slots"):
            value = getattr(self, name)
            require(_is_int(value) and value >= 1,
                    f"sim.{name} must be an integer >= 1, got {value!r}")
        for name in ("td_online", "value_fill_slot_mean", "measure_gap", "match_nonpositive"):
            value = getattr(self, name)
            require(isinstance(value, bool), f"sim.{name} must be True or False, got {value!r}")
        # the bucket search covers straight-line distance <= bucket_cell_m; a road factor < 1
        # would make road pick-ups shorter than straight lines and break that guarantee
        require(_is_real(self.pickup_road_factor) and self.pickup_road_factor >= 1.0,
                f"sim.pickup_road_factor must be >= 1 (road >= straight line), got "
                f"{self.pickup_road_factor!r}")
        require_in_range("sim.cancel_p0", self.cancel_p0, 0.0, 1.0)
        require_in_range("sim.cancel_p_ref", self.cancel_p_ref, 0.0, 1.0, low_open=True)
        require(self.cancel_p0 > 0 or self.cancel_p_ref == 0,
                "sim.cancel_p0 must be > 0 for the exponential cancellation curve")
        require(_is_int(self.value_fill_rings) and self.value_fill_rings >= 0,
                f"sim.value_fill_rings must be an integer >= 0, got {self.value_fill_rings!r}")
        require_positive("sim.value_gap_s", self.value_gap_s, allow_zero=True)
        require(_is_int(self.value_smooth_rings) and self.value_smooth_rings >= 0,
                f"sim.value_smooth_rings must be an integer >= 0, got {self.value_smooth_rings!r}")
        require(self.td_idle_discount in ("elapsed", "slot"),
                f"sim.td_idle_discount must be elapsed or slot, got {self.td_idle_discount!r}")
        require_in_range("sim.gamma", self.gamma, 0.0, 1.0)
        require_in_range("sim.alpha", self.alpha, 0.0, 1.0)
        require(self.bucket_cell_m >= self.radius_m,
                f"sim.bucket_cell_m ({self.bucket_cell_m}) must be >= sim.radius_m "
                f"({self.radius_m}) so that a 3x3 block of cells covers the pick-up radius")
        require(self.topk_method in ("argmin", "top_k", "sort"),
                f"sim.topk_method must be argmin, top_k or sort, got {self.topk_method!r}")
        require(self.patience in ("one_batch", "exponential"),
                f"sim.patience must be one_batch or exponential, got {self.patience!r}")
        require(self.dispatcher in ("nearest", "myopic", "ltd"),
                f"sim.dispatcher must be nearest, myopic or ltd, got {self.dispatcher!r}")
        require(self.matcher in ("auction", "hungarian", "greedy"),
                f"sim.matcher must be auction, hungarian or greedy, got {self.matcher!r}")
        require(isinstance(self.size_classes, (tuple, list)) and all(
                    isinstance(c, (tuple, list)) and len(c) == 2
                    and all(_is_int(v) and v >= 1 for v in c) for c in self.size_classes),
                f"sim.size_classes must be a tuple of (rows, columns) integer pairs >= 1, e.g. "
                f"((8, 24), (16, 48)), got {self.size_classes!r}")
        sizes = self.matrix_sizes
        # platforms that share a class (Fed-LTD's vmapped step 1) solve on the largest class
        # any of them needs: a class with fewer columns than an earlier one would drop edges
        require(all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(sizes, sizes[1:])),
                f"sim.size_classes must be nested: sorted by rows, each (rows, columns) class "
                f"at least as large as the one before in both, ending with (max_rows, "
                f"max_columns); got the classes {sizes}")
        require(isinstance(self.candidate_classes, (tuple, list))
                and all(_is_int(c) and c >= 1 for c in self.candidate_classes),
                f"sim.candidate_classes must be a tuple of integers >= 1, e.g. (8, 16), got "
                f"{self.candidate_classes!r}")
        require(self.k_nearest <= 9 * self.bucket_slots,
                f"sim.k_nearest ({self.k_nearest}) exceeds the candidates a 3x3 bucket block holds")
        # table sizes a city can hold in memory (a typo such as value_cell_m=1 would otherwise
        # surface as an allocation failure deep in JAX)
        value_cells = (math.ceil(self.width_m / (math.sqrt(3) * self.value_cell_m)) + 1) * (
            math.ceil(self.height_m / (1.5 * self.value_cell_m)) + 1)
        require(self.num_slots * value_cells <= 1e8,
                f"sim.value_cell_m={self.value_cell_m!r} / sim.slot_s={self.slot_s!r}: the value "
                f"table would hold ~{self.num_slots * value_cells:.3g} entries (> 1e8)")
        require(self.bucket_cols * self.bucket_rows * self.bucket_slots <= 1e8,
                f"sim.bucket_cell_m={self.bucket_cell_m!r}: the bucket table would hold "
                f"{self.bucket_cols * self.bucket_rows * self.bucket_slots:.3g} entries (> 1e8)")
        if self.matcher == "auction" and len(self.matrix_sizes) > 1:
            # Under vmap over platforms the class is shared and the auction gets its own
            # class's eps (dispatchers.solve_graph); that keeps a platform's matching
            # independent of the others only if no class is transposed (rows <= columns) and
            # every class has more rows than the auction's bidders_per_round (4).
            bad = [c for c in self.matrix_sizes if not (AUCTION_BIDDERS < c[0] <= c[1])]
            require(not bad, f"sim.size_classes: with the auction every matrix class (rows, "
                             f"columns) needs {AUCTION_BIDDERS} < rows <= columns (see "
                             f"dispatchers.solve_graph), got {bad} in {self.matrix_sizes}")

    # derived static sizes ------------------------------------------------------------------
    @property
    def bucket_cols(self) -> int:
        return max(1, math.ceil(self.width_m / self.bucket_cell_m))

    @property
    def bucket_rows(self) -> int:
        return max(1, math.ceil(self.height_m / self.bucket_cell_m))

    @property
    def matrix_sizes(self) -> tuple:
        """Increasing (rows, columns) classes ending with (max_rows, max_columns)."""
        top = (min(self.max_rows, self.max_pending), self.max_columns)
        small = sorted({(min(int(r), top[0]), min(int(c), top[1])) for r, c in self.size_classes})
        return tuple(s for s in small if s != top) + (top,)

    @property
    def pending_sizes(self) -> tuple:
        """Increasing pending-row classes of the candidate search, ending with max_pending."""
        small = sorted({min(int(r), self.max_pending) for r in self.candidate_classes})
        return tuple(r for r in small if r != self.max_pending) + (self.max_pending,)

    @property
    def num_slots(self) -> int:
        return math.ceil(86_400 / self.slot_s)

    @property
    def cancel_rate_per_m(self) -> float:
        if self.cancel_p0 <= 0:
            return 0.0
        return math.log(self.cancel_p_ref / self.cancel_p0) / self.cancel_ref_m


@struct.dataclass
class Drivers:
    """Per-driver state [D]: status (OFFLINE/IDLE/BUSY), position, shift end, bucket slot."""
    status: jnp.ndarray       # i32[D]
    x: jnp.ndarray            # f32[D] metres; a busy driver holds its trip's destination
    y: jnp.ndarray
    shift_end: jnp.ndarray    # f32[D] seconds since day start
    bucket_cell: jnp.ndarray  # i32[D] cell of the bucket table listing the driver (-1: none)
    bucket_slot: jnp.ndarray  # i32[D]
    exists: jnp.ndarray       # bool[D] False for padding (stacked platforms)


@struct.dataclass
class Pending:
    """Pending (unassigned) orders [P]."""
    valid: jnp.ndarray     # bool[P]
    order: jnp.ndarray     # i32[P] index into the day's order list (-1 free)
    ox: jnp.ndarray        # f32[P] origin / destination, metres
    oy: jnp.ndarray
    dx: jnp.ndarray
    dy: jnp.ndarray
    fare: jnp.ndarray
    duration: jnp.ndarray  # trip duration, seconds
    expiry: jnp.ndarray    # dropped after the dispatch at which now >= expiry


@struct.dataclass
class Arrivals:
    """Orders arriving in one batch [A] (stacked over batches by the schedule)."""
    valid: jnp.ndarray
    order: jnp.ndarray
    ox: jnp.ndarray
    oy: jnp.ndarray
    dx: jnp.ndarray
    dy: jnp.ndarray
    fare: jnp.ndarray
    duration: jnp.ndarray
    patience: jnp.ndarray


@struct.dataclass
class BatchEvents:
    """Scan input of one batch: arriving orders and shift events (driver index, -1 pad)."""
    arrivals: Arrivals
    online: jnp.ndarray    # i32[Son]
    offline: jnp.ndarray   # i32[Soff]


@struct.dataclass
class Totals:
    """Running counters of one platform (float32 scalars; counts are exact below 2^24)."""
    arrived: jnp.ndarray
    pending_overflow: jnp.ndarray
    matched: jnp.ndarray
    cancelled: jnp.ndarray
    completed: jnp.ndarray
    expired: jnp.ndarray
    revenue: jnp.ndarray
    pickup_m: jnp.ndarray
    idle_s: jnp.ndarray
    busy_s: jnp.ndarray
    online_s: jnp.ndarray
    bucket_overflow: jnp.ndarray
    row_overflow: jnp.ndarray
    column_overflow: jnp.ndarray
    calendar_clamped: jnp.ndarray
    calendar_overflow: jnp.ndarray

    @classmethod
    def zeros(cls) -> "Totals":
        return cls(*[jnp.zeros((), jnp.float32) for _ in dataclasses.fields(cls)])


@struct.dataclass
class SimState:
    batch: jnp.ndarray      # i32[] index of the next batch
    drivers: Drivers
    pending: Pending
    bucket: jnp.ndarray     # i32[bucket cells, S] idle driver ids (-1 empty)
    bucket_x: jnp.ndarray   # f32[bucket cells, S] their positions, stored alongside so the
    bucket_y: jnp.ndarray   # candidate search gathers whole rows, not single drivers
    calendar: jnp.ndarray   # i32[H, Sc] drivers whose trip ends in that batch (ring)
    cal_count: jnp.ndarray  # i32[H] entries of the row ...
    cal_stamp: jnp.ndarray  # i32[H] ... valid for this batch index only (rows are never cleared,
                            # which would copy the whole ring every batch on XLA CPU)
    value: jnp.ndarray      # f32[T, G] state values V(time slot, hexagon)
    totals: Totals


@struct.dataclass
class Candidates:
    """Candidate edges: for each pending slot, up to k nearest idle drivers within the radius."""
    driver: jnp.ndarray  # i32[P, k] (-1 none)
    dist: jnp.ndarray    # f32[P, k] pick-up distance (metres)
    mask: jnp.ndarray    # bool[P, k]


@struct.dataclass
class Graph:
    """Dense bipartite graph handed to the matcher: rows = pending slots, cols = drivers."""
    weight: jnp.ndarray      # f32[P, M]
    mask: jnp.ndarray        # bool[P, M]
    dist: jnp.ndarray        # f32[P, M]
    col_driver: jnp.ndarray  # i32[M] (-1 unused column)


@struct.dataclass
class Assignment:
    """A decision for each pending slot: the driver (-1: none) and the pick-up distance."""
    driver: jnp.ndarray  # i32[P]
    dist: jnp.ndarray    # f32[P]
    weight: jnp.ndarray  # f32[P] edge weight of the chosen pair (advantage for TD)


@struct.dataclass
class BatchLog:
    """Per-batch record (scan output)."""
    pending: jnp.ndarray
    idle: jnp.ndarray
    matched: jnp.ndarray
    revenue: jnp.ndarray
    total: jnp.ndarray      # matcher objective
    exact: jnp.ndarray      # exact objective (measure_gap) else = total
    rows: jnp.ndarray       # orders with candidate edges (matrix rows used)
    cols: jnp.ndarray       # distinct candidate drivers (matrix columns used)
