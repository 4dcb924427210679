"""Loaders for Didi GAIA ride-hailing files (and the synthetic city's companion files).

Formats (no header, comma separated):

* order file: ``order_id, ride_start_timestamp, ride_stop_timestamp, pickup_longitude,
  pickup_latitude, dropoff_longitude, dropoff_latitude`` (Unix seconds, GCJ-02 degrees), with
  an optional 8th column ``reward_units`` (the fare, KDD Cup 2020 release). All lines of one
  file must have the same number of columns.
* GPS file: ``driver_id, order_id, timestamp, longitude, latitude``.
* drivers file (this project's generator): ``driver_id, shift_start, shift_end, longitude,
  latitude`` (shift start position).
* platform file (generator): ``kind, id, platform`` with kind ``order`` or ``driver``.

Malformed input raises :class:`DataError` naming the file and the 1-based line number: wrong
column count, a non-numeric field, ride end before start, coordinates outside the configured
bounding box, duplicate ids, a timestamp that is not a whole number of seconds in [0, 2^53]
("bad timestamp"). With ``lenient=True`` such lines are skipped and counted per reason
in the returned :class:`LoadReport` instead; nothing is ever silently wrong. Parsing is one
validating ``csv`` pass into column lists and then NumPy arrays (~1 s per 100k rows).
"""
from __future__ import annotations

import csv
import dataclasses
import math
from collections import Counter
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """A data file is malformed; the message names the file, the line and the problem."""

    def __init__(self, path, line: int, reason: str, detail: str):
        self.path, self.line, self.reason = str(path), line, reason
        super().__init__(f"{path}:{line}: {reason}: {detail}")


@dataclasses.dataclass(frozen=True)
class Bounds:
    """A longitude/latitude bounding box (degrees, inclusive)."""
    lon_min: float
    lon_max: float
    lat_min: float
    lat_max: float

    def contains(self, lon: float, lat: float) -> bool:
        return self.lon_min <= lon <= self.lon_max and self.lat_min <= lat <= self.lat_max

    @property
    def width_m(self) -> float:
        from fedrl.data.grid import local_projection
        return (self.lon_max - self.lon_min) * local_projection(self).m_per_deg_lon

    @property
    def height_m(self) -> float:
        from fedrl.data.grid import EARTH_M_PER_DEG_LAT
        return (self.lat_max - self.lat_min) * EARTH_M_PER_DEG_LAT


# Chengdu, GAIA city-scale release: ~29.7 km x 33.8 km around the centre [assumption: the box
# of the Nov 2016 Chengdu order data, within which almost all pick-ups fall].
CHENGDU_BOUNDS = Bounds(lon_min=103.95, lon_max=104.26, lat_min=30.52, lat_max=30.826)


@dataclasses.dataclass
class LoadReport:
    """What a load did: lines read, rows kept and lines skipped per reason (lenient mode)."""
    path: str
    lines: int = 0
    kept: int = 0
    skipped: dict = dataclasses.field(default_factory=dict)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())


@dataclasses.dataclass
class Orders:
    """Order table as arrays of length N (struct of arrays)."""
    order_id: np.ndarray      # str
    start: np.ndarray         # int64 Unix seconds (request / pick-up time)
    stop: np.ndarray          # int64
    pickup_lon: np.ndarray    # float64
    pickup_lat: np.ndarray
    dropoff_lon: np.ndarray
    dropoff_lat: np.ndarray
    reward: np.ndarray | None = None  # float64 fare, when the file has reward_units

    def __len__(self) -> int:
        return len(self.order_id)

    def subset(self, index) -> "Orders":
        pick = lambda a: None if a is None else a[index]
        return Orders(*(pick(getattr(self, f.name)) for f in dataclasses.fields(self)))


@dataclasses.dataclass
class GpsTrace:
    driver_id: np.ndarray
    order_id: np.ndarray
    timestamp: np.ndarray
    lon: np.ndarray
    lat: np.ndarray

    def __len__(self) -> int:
        return len(self.driver_id)


@dataclasses.dataclass
class Drivers:
    driver_id: np.ndarray
    shift_start: np.ndarray   # int64 Unix seconds
    shift_end: np.ndarray
    lon: np.ndarray
    lat: np.ndarray

    def __len__(self) -> int:
        return len(self.driver_id)

    def subset(self, index) -> "Drivers":
        return Drivers(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))


def _first_undecodable_line(path) -> tuple[int, str]:
    """(line number, reason) of the first line of ``path`` that is not UTF-8 (the text reader
    decodes in chunks, so its error does not say which line)."""
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return lineno, f"byte {raw[err.start:err.start + 1]!r} at column {err.start + 1}"
    return 1, "undecodable bytes"


class _Reader:
    """Shared validation: raise or count-and-skip, per line."""

    def __init__(self, path, lenient: bool):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"data file not found: {self.path}")
        self.lenient = lenient
        self.report = LoadReport(str(self.path))
        self.skipped: Counter = Counter()

    def fail(self, line: int, reason: str, detail: str) -> None:
        if not self.lenient:
            raise DataError(self.path, line, reason, detail)
        self.skipped[reason] += 1

    def rows(self):
        lineno = 0
        with open(self.path, newline="", encoding="utf-8") as handle:
            try:
                for lineno, row in enumerate(csv.reader(handle), start=1):
                    self.report.lines = lineno
                    if not row or (len(row) == 1 and not row[0].strip()):
                        continue  # blank lines carry nothing
                    yield lineno, [field.strip() for field in row]
            except UnicodeDecodeError:   # a binary or non-UTF-8 file: not skippable
                bad, detail = _first_undecodable_line(self.path)
                raise DataError(self.path, bad, "not UTF-8 text", detail) from None

    def finish(self, kept: int) -> LoadReport:
        self.report.kept = kept
        self.report.skipped = dict(self.skipped)
        return self.report


# Timestamps are whole Unix seconds >= 0; the loader stores them in float64 columns before the
# int64 cast, which is exact only up to 2^53 (year ~285 million: any real timestamp fits).
MAX_TIMESTAMP = 2 ** 53


def _numbers(reader: _Reader, lineno: int, row, names, kinds):
    """Parse the named fields; returns None (after fail) on a bad one.

    ``int`` fields are timestamps: whole seconds in [0, 2^53] ("1477929600.0" is accepted;
    "1477929600.5", negative values and values above 2^53, which float64 would round, fail
    as "bad timestamp"). ``float`` fields must be finite numbers ("non-numeric field")."""
    out = []
    for value, name, kind in zip(row, names, kinds):
        try:
            number = int(value) if kind is int else float(value)
        except ValueError:
            try:  # GAIA timestamps are integers, but tolerate "1477929600.0"
                number = float(value)
            except ValueError:
                reader.fail(lineno, "non-numeric field", f"{name}={value!r}")
                return None
            if kind is int:
                if not math.isfinite(number):
                    reader.fail(lineno, "non-numeric field", f"{name}={value!r} is not finite")
                    return None
                if number != math.floor(number):
                    reader.fail(lineno, "bad timestamp",
                                f"{name}={value!r} is not a whole number of seconds")
                    return None
                number = int(number)
        if kind is int and not 0 <= number <= MAX_TIMESTAMP:
            reader.fail(lineno, "bad timestamp",
                        f"{name}={value!r} is outside [0, 2^53] (negative, or too large to "
                        "be stored exactly)")
            return None
        if kind is float and not math.isfinite(number):
            reader.fail(lineno, "non-numeric field", f"{name}={value!r} is not finite")
            return None
        out.append(number)
    return out


_ORDER_FIELDS = ("ride_start_timestamp", "ride_stop_timestamp", "pickup_longitude",
                 "pickup_latitude", "dropoff_longitude", "dropoff_latitude", "reward_units")
_ORDER_KINDS = (int, int, float, float, float, float, float)


def load_orders(path, *, bounds: Bounds | None = CHENGDU_BOUNDS,
                lenient: bool = False) -> tuple[Orders, LoadReport]:
    """Load a GAIA order file (7 columns, or 8 with ``reward_units``).

    Raises :class:`DataError` (file:line: reason) on the first malformed line unless
    ``lenient``; then malformed lines are skipped and counted in the report. ``bounds=None``
    disables the bounding-box check. A duplicate order id is an error on its second occurrence
    (lenient: the later line is skipped).
    """
    reader = _Reader(path, lenient)
    ncols = None
    ids, nums, seen = [], [], {}
    for lineno, row in reader.rows():
        if ncols is None:
            if len(row) not in (7, 8):
                reader.fail(lineno, "wrong column count",
                            f"expected 7 (or 8 with reward_units) columns, got {len(row)}")
                continue
            ncols = len(row)
        if len(row) != ncols:
            reader.fail(lineno, "wrong column count",
                        f"expected {ncols} columns like the first row, got {len(row)}")
            continue
        oid = row[0]
        if not oid:
            reader.fail(lineno, "empty order id", "order_id is empty")
            continue
        values = _numbers(reader, lineno, row[1:], _ORDER_FIELDS, _ORDER_KINDS)
        if values is None:
            continue
        start, stop, plon, plat, dlon, dlat = values[:6]
        if stop < start:
            reader.fail(lineno, "end before start",
                        f"ride_stop_timestamp {stop} < ride_start_timestamp {start}")
            continue
        if bounds is not None and not (bounds.contains(plon, plat) and bounds.contains(dlon, dlat)):
            reader.fail(lineno, "outside bounding box",
                        f"pick-up ({plon}, {plat}) or drop-off ({dlon}, {dlat}) outside {bounds}")
            continue
        if ncols == 8 and values[6] < 0:
            reader.fail(lineno, "negative reward", f"reward_units={values[6]}")
            continue
        if oid in seen:
            reader.fail(lineno, "duplicate order id",
                        f"order_id {oid!r} already on line {seen[oid]}")
            continue
        seen[oid] = lineno
        ids.append(oid)
        nums.append(values)
    arr = np.asarray(nums, dtype=np.float64).reshape(len(nums), (ncols or 7) - 1)
    orders = Orders(
        order_id=np.asarray(ids, dtype=str), start=arr[:, 0].astype(np.int64),
        stop=arr[:, 1].astype(np.int64), pickup_lon=arr[:, 2], pickup_lat=arr[:, 3],
        dropoff_lon=arr[:, 4], dropoff_lat=arr[:, 5],
        reward=arr[:, 6].copy() if ncols == 8 else None)
    return orders, reader.finish(len(ids))


def load_gps(path, *, bounds: Bounds | None = CHENGDU_BOUNDS,
             lenient: bool = False) -> tuple[GpsTrace, LoadReport]:
    """Load a GAIA GPS file ``driver_id, order_id, timestamp, longitude, latitude``.

    Pure-Python parsing: fine for samples; a full day (~32M rows) takes minutes.
    """
    reader = _Reader(path, lenient)
    drivers, orders, nums = [], [], []
    for lineno, row in reader.rows():
        if len(row) != 5:
            reader.fail(lineno, "wrong column count", f"expected 5 columns, got {len(row)}")
            continue
        values = _numbers(reader, lineno, row[2:], ("timestamp", "longitude", "latitude"),
                          (int, float, float))
        if values is None:
            continue
        if bounds is not None and not bounds.contains(values[1], values[2]):
            reader.fail(lineno, "outside bounding box",
                        f"({values[1]}, {values[2]}) outside {bounds}")
            continue
        drivers.append(row[0])
        orders.append(row[1])
        nums.append(values)
    arr = np.asarray(nums, dtype=np.float64).reshape(len(nums), 3)
    trace = GpsTrace(np.asarray(drivers, dtype=str), np.asarray(orders, dtype=str),
                     arr[:, 0].astype(np.int64), arr[:, 1], arr[:, 2])
    return trace, reader.finish(len(drivers))


def load_drivers(path, *, bounds: Bounds | None = CHENGDU_BOUNDS,
                 lenient: bool = False) -> tuple[Drivers, LoadReport]:
    """Load a drivers file ``driver_id, shift_start, shift_end, longitude, latitude``."""
    reader = _Reader(path, lenient)
    ids, nums, seen = [], [], {}
    for lineno, row in reader.rows():
        if len(row) != 5:
            reader.fail(lineno, "wrong column count", f"expected 5 columns, got {len(row)}")
            continue
        values = _numbers(reader, lineno, row[1:], ("shift_start", "shift_end", "longitude",
                                                    "latitude"), (int, int, float, float))
        if values is None:
            continue
        if values[1] < values[0]:
            reader.fail(lineno, "end before start",
                        f"shift_end {values[1]} < shift_start {values[0]}")
            continue
        if bounds is not None and not bounds.contains(values[2], values[3]):
            reader.fail(lineno, "outside bounding box",
                        f"({values[2]}, {values[3]}) outside {bounds}")
            continue
        if row[0] in seen:
            reader.fail(lineno, "duplicate driver id",
                        f"driver_id {row[0]!r} already on line {seen[row[0]]}")
            continue
        seen[row[0]] = lineno
        ids.append(row[0])
        nums.append(values)
    arr = np.asarray(nums, dtype=np.float64).reshape(len(nums), 4)
    drivers = Drivers(np.asarray(ids, dtype=str), arr[:, 0].astype(np.int64),
                      arr[:, 1].astype(np.int64), arr[:, 2], arr[:, 3])
    return drivers, reader.finish(len(ids))


def load_platforms(path, *, lenient: bool = False) -> tuple[dict, LoadReport]:
    """Load ``kind, id, platform`` rows -> {"order": {id: k}, "driver": {id: k}}."""
    reader = _Reader(path, lenient)
    out = {"order": {}, "driver": {}}
    kept = 0
    for lineno, row in reader.rows():
        if len(row) != 3:
            reader.fail(lineno, "wrong column count", f"expected 3 columns, got {len(row)}")
            continue
        kind, ident, platform = row
        if kind not in out:
            reader.fail(lineno, "unknown kind", f"kind must be order or driver, got {kind!r}")
            continue
        if not (platform.isascii() and platform.isdigit()):  # "²".isdigit() is True
            reader.fail(lineno, "non-numeric field", f"platform={platform!r}")
            continue
        if ident in out[kind]:
            reader.fail(lineno, f"duplicate {kind} id", f"{ident!r} listed twice")
            continue
        out[kind][ident] = int(platform)
        kept += 1
    return out, reader.finish(kept)


def platform_index(ids: np.ndarray, assignment: dict, *, path="platform file",
                   kind: str = "order") -> np.ndarray:
    """Platform of each id (int array); an id missing from ``assignment`` (the ``kind`` map
    loaded from the platform file ``path``) is a DataError naming that file."""
    out = np.empty(len(ids), np.int32)
    for i, ident in enumerate(ids.tolist()):
        if ident not in assignment:
            raise DataError(path, 0, "missing id",
                            f"{kind} id {ident!r} (row {i + 1} of the {kind}s) is not listed "
                            f"in the platform file")
        out[i] = assignment[ident]
    return out
