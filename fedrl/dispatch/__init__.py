"""Batched ride-hailing order dispatch (the local layer of Fed-LTD, Wang et al. KDD 2022)."""
from fedrl.dispatch.types import (BUSY, IDLE, OFFLINE, Assignment, Candidates, Graph, SimConfig,
                                  SimState, Totals)

__all__ = ["BUSY", "IDLE", "OFFLINE", "Assignment", "Candidates", "Graph", "SimConfig",
           "SimState", "Totals"]
