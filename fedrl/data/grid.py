"""Spatial grids over a city: local metric projection, square and hexagonal cells.

Fed-LTD's value function is tabular over (time slot, grid cell) (Xu et al., KDD 2018 use a
hexagonal grid; the KDD Cup 2020 data used ~0.6 km hexagons). This module maps longitude/latitude
to local metres with an equirectangular projection around the bounding-box centre (error < 0.1 %
over a 30 km city, far below GPS noise) and metres to a cell index. ``cell_of_xy`` is pure
``jax.numpy`` so it can run inside jitted simulator steps; the neighbour table and centres are
precomputed NumPy arrays (static data).
"""
from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from fedrl.config import require, require_positive

EARTH_M_PER_DEG_LAT = 110_574.0   # metres per degree of latitude (WGS-84, mid latitudes)
EARTH_M_PER_DEG_LON_EQ = 111_320.0  # metres per degree of longitude at the equator


@dataclasses.dataclass(frozen=True)
class Projection:
    """Equirectangular projection around (lon0, lat0): lon/lat -> x/y metres."""
    lon0: float
    lat0: float

    @property
    def m_per_deg_lon(self) -> float:
        return EARTH_M_PER_DEG_LON_EQ * math.cos(math.radians(self.lat0))

    def to_xy(self, lon, lat):
        """Metres east/north of (lon0, lat0); works on NumPy or JAX arrays."""
        return (lon - self.lon0) * self.m_per_deg_lon, (lat - self.lat0) * EARTH_M_PER_DEG_LAT

    def to_lonlat(self, x, y):
        return x / self.m_per_deg_lon + self.lon0, y / EARTH_M_PER_DEG_LAT + self.lat0


def local_projection(bounds) -> Projection:
    """Projection whose origin is the south-west corner of ``bounds`` (so x, y >= 0 inside)."""
    return Projection(lon0=bounds.lon_min, lat0=bounds.lat_min)


@dataclasses.dataclass(frozen=True, eq=False)
class Grid:
    """A tiling of the rectangle [0, width] x [0, height] metres into ``num_cells`` cells.

    ``kind`` is "square" or "hex" (pointy-top hexagons in odd-r offset layout). Cells are
    numbered ``row * cols + col``. ``neighbors[c]`` lists adjacent cells (-1 padded: 8 for
    squares, 6 for hexagons); ``centers[c]`` is the cell centre in metres.
    """
    kind: str
    size_m: float          # square side, or hexagon circumradius
    cols: int
    rows: int
    width_m: float
    height_m: float
    centers: np.ndarray    # [C, 2] float32
    neighbors: np.ndarray  # [C, 6 or 8] int32, -1 = outside

    @property
    def num_cells(self) -> int:
        return self.cols * self.rows

    def cell_of_xy(self, x, y, xp=jnp):
        """Cell index of points (x, y) in metres; points outside are clamped to the border.

        ``xp`` is ``jax.numpy`` (traceable, default) or ``numpy`` (host code, same result)."""
        if self.kind == "square":
            col = xp.clip(xp.floor(x / self.size_m).astype(xp.int32), 0, self.cols - 1)
            row = xp.clip(xp.floor(y / self.size_m).astype(xp.int32), 0, self.rows - 1)
            return row * self.cols + col
        return _hex_cell(x, y, self.size_m, self.cols, self.rows, xp)

    def cell_of_xy_np(self, x, y) -> np.ndarray:
        return np.asarray(self.cell_of_xy(np.asarray(x, np.float32), np.asarray(y, np.float32),
                                          xp=np))


def _hex_cell(x, y, radius, cols, rows, xp=jnp):
    """Pointy-top hexagon containing (x, y): axial coordinates by cube rounding.

    The lattice is shifted by (sqrt(3)/2 R, R) so that every point of the box has col, row >= 0.
    """
    xs = x + math.sqrt(3.0) / 2.0 * radius
    ys = y + radius
    q = (math.sqrt(3.0) / 3.0 * xs - ys / 3.0) / radius
    r = (2.0 / 3.0 * ys) / radius
    cx, cz = q, r
    cy = -cx - cz
    rx, ry, rz = xp.round(cx), xp.round(cy), xp.round(cz)
    dx, dy, dz = xp.abs(rx - cx), xp.abs(ry - cy), xp.abs(rz - cz)
    fix_x = (dx > dy) & (dx > dz)
    fix_z = ~fix_x & ~(dy > dz)
    rx = xp.where(fix_x, -ry - rz, rx)
    rz = xp.where(fix_z, -rx - ry, rz)
    qi = xp.asarray(rx).astype(xp.int32)
    ri = xp.asarray(rz).astype(xp.int32)
    col = qi + (ri - (ri & 1)) // 2
    row = xp.clip(ri, 0, rows - 1)
    col = xp.clip(col, 0, cols - 1)
    return row * cols + col


def square_grid(width_m: float, height_m: float, size_m: float) -> Grid:
    """Square cells of side ``size_m`` covering the box; 8-neighbourhood."""
    require_positive("grid.size_m", size_m)
    require_positive("grid.width_m", width_m)
    require_positive("grid.height_m", height_m)
    cols = max(1, math.ceil(width_m / size_m))
    rows = max(1, math.ceil(height_m / size_m))
    rr, cc = np.divmod(np.arange(rows * cols), cols)
    centers = np.stack([(cc + 0.5) * size_m, (rr + 0.5) * size_m], 1).astype(np.float32)
    offs = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]
    nb = np.full((rows * cols, 8), -1, np.int32)
    for j, (dr, dc) in enumerate(offs):
        r2, c2 = rr + dr, cc + dc
        ok = (r2 >= 0) & (r2 < rows) & (c2 >= 0) & (c2 < cols)
        nb[ok, j] = (r2 * cols + c2)[ok]
    return Grid("square", float(size_m), cols, rows, float(width_m), float(height_m), centers, nb)


def hex_grid(width_m: float, height_m: float, radius_m: float = 600.0) -> Grid:
    """Pointy-top hexagons of circumradius ``radius_m`` (default 0.6 km) covering the box."""
    require_positive("grid.radius_m", radius_m)
    require(width_m > 0 and height_m > 0, "grid width_m and height_m must be > 0")
    w = math.sqrt(3.0) * radius_m
    cols = math.ceil((width_m + w) / w) + 1
    rows = math.ceil((height_m + 2 * radius_m) / (1.5 * radius_m)) + 1
    rr, cc = np.divmod(np.arange(rows * cols), cols)
    cx = w * (cc + 0.5 * (rr & 1)) - w / 2.0
    cy = 1.5 * radius_m * rr - radius_m
    centers = np.stack([cx, cy], 1).astype(np.float32)
    even = [(0, 1), (0, -1), (-1, -1), (-1, 0), (1, -1), (1, 0)]
    odd = [(0, 1), (0, -1), (-1, 0), (-1, 1), (1, 0), (1, 1)]
    nb = np.full((rows * cols, 6), -1, np.int32)
    for j in range(6):
        dr = np.where(rr & 1, odd[j][0], even[j][0])
        dc = np.where(rr & 1, odd[j][1], even[j][1])
        r2, c2 = rr + dr, cc + dc
        ok = (r2 >= 0) & (r2 < rows) & (c2 >= 0) & (c2 < cols)
        nb[ok, j] = (r2 * cols + c2)[ok]
    return Grid("hex", float(radius_m), cols, rows, float(width_m), float(height_m), centers, nb)
