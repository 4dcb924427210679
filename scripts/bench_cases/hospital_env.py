"""Benchmark ``hospital_env``: environment steps per second of the ED simulator.

Ours: K heterogeneous hospitals (``make_hospitals``) stepped together, ``jax.vmap`` over the
stacked ``EnvParams`` inside one jitted ``lax.scan`` over time, strict-priority actions, Gymnax
auto-reset included -- the shape the federated DQN uses. Baseline, measured in the same run: the
same work as a Python loop over hospitals, each running its own jitted scan (one compiled
function reused across hospitals). Compile time (first call) is reported separately.
"""
from __future__ import annotations

import time

import jax

from fedrl.envs.hospital import HospitalConfig, make_hospitals, reset, step
from fedrl.envs.hospital.policies import strict_priority

from bench_cases.timing import median_time

NAME = "hospital_env"


def _episode(params, key, num_steps: int):
    obs, state = reset(key, params)

    def body(carry, k):
        obs, state = carry
        k_a, k_s = jax.random.split(k)
        action = strict_priority(k_a, obs, state, params)
        obs, state, reward, _, _ = step(k_s, state, action, params)
        return (obs, state), reward

    _, rewards = jax.lax.scan(body, (obs, state), jax.random.split(key, num_steps))
    return rewards.sum()


def run(quick: bool = False) -> list[dict]:
    num_hospitals = 16
    num_steps = 288 if quick else 2016
    repeats = 2 if quick else 3
    cfg = HospitalConfig()
    params = make_hospitals(cfg, num_hospitals, jax.random.key(0))
    keys = jax.random.split(jax.random.key(1), num_hospitals)

    batched = jax.jit(jax.vmap(lambda p, k: _episode(p, k, num_steps)))
    t0 = time.perf_counter()
    jax.block_until_ready(batched(params, keys))
    compile_s = time.perf_counter() - t0
    ours = median_time(lambda: batched(params, keys), repeats)

    single = jax.jit(lambda p, k: _episode(p, k, num_steps))
    take = lambda i: jax.tree.map(lambda x: x[i], params)  # noqa: E731
    hospitals = [take(i) for i in range(num_hospitals)]
    jax.block_until_ready(single(hospitals[0], keys[0]))
    loop = median_time(lambda: [single(hospitals[i], keys[i]) for i in range(num_hospitals)],
                   repeats)

    env_steps = num_hospitals * num_steps
    shape = {"hospitals": num_hospitals, "steps": num_steps, "slots": cfg.max_patients}
    return [
        {"name": "hospital_env_steps", "params": shape, "value": env_steps / ours,
         "unit": "env-steps/s", "baseline": "python loop over hospitals (jitted scan each)",
         "baseline_value": env_steps / loop, "ratio": loop / ours},
        {"name": "hospital_env_compile", "params": shape, "value": compile_s, "unit": "s",
         "baseline": None, "baseline_value": None, "ratio": None},
    ]
