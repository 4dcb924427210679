"""Emergency-department scheduling environment with an MLFQ (seed 000), Jumanji-style layout:

``config`` (HospitalConfig), ``types`` (EnvParams / EnvState pytrees), ``generator``
(make_params, make_hospitals), ``env`` (reset / step / observation / route_transfers),
``reward``, ``invariants`` (check_invariants), ``policies`` (heuristics), ``metrics`` (evaluate).
See docs/hospital_env.md.
"""
from fedrl.envs.hospital.config import ConfigError, HospitalConfig
from fedrl.envs.hospital.env import observation, reset, route_transfers, step, step_env
from fedrl.envs.hospital.generator import hospital_configs, make_hospitals, make_params
from fedrl.envs.hospital.invariants import check_invariants
from fedrl.envs.hospital.metrics import evaluate, rollout, summarize
from fedrl.envs.hospital.policies import HEURISTIC_ENV, HEURISTICS, heuristic_params
from fedrl.envs.hospital.types import (
    ACTION_NAMES, NUM_ACTIONS, OBS_DIM, EnvParams, EnvState)

__all__ = ["ConfigError", "HospitalConfig", "observation", "reset", "route_transfers", "step",
           "step_env", "hospital_configs", "make_hospitals", "make_params", "check_invariants",
           "evaluate", "rollout", "summarize", "HEURISTICS", "HEURISTIC_ENV", "heuristic_params",
           "ACTION_NAMES", "NUM_ACTIONS",
           "OBS_DIM", "EnvParams", "EnvState"]
