"""Ride-hailing data: Didi GAIA file loaders, a synthetic Chengdu-like city, spatial grids."""
from fedrl.data.gaia import (CHENGDU_BOUNDS, Bounds, DataError, Drivers, GpsTrace, LoadReport,
                             Orders, load_drivers, load_gps, load_orders, load_platforms)
from fedrl.data.grid import Grid, hex_grid, local_projection, square_grid

__all__ = ["CHENGDU_BOUNDS", "Bounds", "DataError", "Drivers", "GpsTrace", "LoadReport",
           "Orders", "load_drivers", "load_gps", "load_orders", "load_platforms", "Grid",
           "hex_grid", "square_grid", "local_projection"]
