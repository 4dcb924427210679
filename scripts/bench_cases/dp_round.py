"""Benchmark ``dp_round``: cost of DP and DP + secure aggregation in one federated DQN round.

Ours: the lead's jitted federated round (``make_federated_round``) with the aggregation chain
``dp_fedavg`` (clip, sum, Gaussian noise, fixed denominator) or ``dp_secure_fedavg`` (the same
with the sum done by mask-based secure aggregation in Z_{2^32}). Baseline, measured in the same
run: the same round with plain ``fedavg``. Poisson client sampling (rate q), the seed's 256-256
Q-network on 12 inputs and 5 actions (70,405 parameters), batch 64, one update per env step.
ratio = t(plain) / t(ours): the target is overhead < 1.5x, i.e. ratio > 0.67.
"""
from __future__ import annotations

import statistics
import time

import jax

from fedrl.agents.dqn import DQNConfig, EnvFns, make_dqn
from fedrl.federated.aggregation import dp_fedavg, dp_secure_fedavg, fedavg
from fedrl.envs import hospital
from fedrl.federated.round import FederatedConfig, make_federated_round

from bench_cases.timing import compiled_round

NAME = "dp_round"
OBS_DIM, NUM_ACTIONS = 12, 5


def _environment(k: int):
    params = hospital.make_hospitals(hospital.HospitalConfig(), k, jax.random.key(0))
    return (EnvFns(reset=hospital.reset, step=hospital.step),
            jax.tree.map(lambda x: x[:, None], params), "hospital", hospital.NUM_ACTIONS)


def _compiled_round(dqn, env, env_params, fed_cfg, aggregator):
    return compiled_round(make_federated_round(dqn, env, env_params, fed_cfg, aggregator))


def _interleaved_times(variants: dict, repeats: int) -> dict:
    """Median round time per variant, rounds of the variants interleaved so that load drift
    on a shared machine hits all of them alike."""
    times = {name: [] for name in variants}
    for r in range(repeats):
        for name, (step, state) in variants.items():
            t0 = time.perf_counter()
            state, metrics = step(state, jax.random.fold_in(jax.random.key(3), r))
            jax.block_until_ready((state, metrics))
            times[name].append(time.perf_counter() - t0)
            variants[name] = (step, state)
    return {name: statistics.median(t) for name, t in times.items()}


def run(quick: bool = False) -> list[dict]:
    parties_list = (4,) if quick else (10, 50)
    local_steps = 16 if quick else 128
    repeats = 3 if quick else 7
    q, clip, z = 0.5, 1.0, 1.0
    dqn_cfg = DQNConfig(hidden_sizes=(64, 64) if quick else (256, 256), batch_size=64,
                        buffer_capacity=4_096, learning_starts=16 if quick else 64,
                        train_every=1, target_update_every=250)
    rows = []
    for k in parties_list:
        env, env_params, env_name, num_actions = _environment(k)
        dqn = make_dqn(dqn_cfg, num_actions)
        fed_cfg = FederatedConfig(num_rounds=1, local_steps=local_steps, sampling="poisson",
                                  sampling_rate=q)
        aggregators = {"fedavg": fedavg(), "dp_fedavg": dp_fedavg(clip, z, q * k),
                       "dp_secure_fedavg": dp_secure_fedavg(clip, z, q * k)}
        compiled, compile_s = {}, {}
        for label, aggregator in aggregators.items():
            step, state, compile_s[label] = _compiled_round(dqn, env, env_params, fed_cfg,
                                                            aggregator)
            compiled[label] = (step, state)
        t = _interleaved_times(compiled, repeats)
        for label in ("dp_fedavg", "dp_secure_fedavg"):
            rows.append({"name": f"dp_round_{label}",
                         "params": {"K": k, "q": q, "clip": clip, "z": z,
                                    "local_steps": local_steps,
                                    "net": "x".join(map(str, dqn_cfg.hidden_sizes)),
                                    "env": env_name, "compile_s": round(compile_s[label], 2),
                                    "plain_compile_s": round(compile_s["fedavg"], 2),
                                    "overhead": round(t[label] / t["fedavg"], 3)},
                         "value": t[label], "unit": "s/round", "baseline": "plain fedavg round",
                         "baseline_value": t["fedavg"], "ratio": t["fedavg"] / t[label]})
    return rows
