"""Benchmark ``fed_dqn``: throughput of one federated DQN round at K parties.

Ours: ``make_federated_round`` (one jitted function: scan over local steps of a vmap over
parties, ``DQN.train_parties``).
Two baselines, measured in the same run: (1) the same per-party work done by a Python loop over
parties, each calling a jitted single-party local training (``DQN.train``, itself a scan over
steps), followed by the same FedAvg -- a strong baseline that already amortizes dispatch over
the local steps; (2) a Python loop over parties and local steps calling a jitted single-party
train step (one env step + one update), the way a conventional simulator is written. Both use
the hospital environment, the seed's 256-256 Q-network and batch 64, with one gradient update
per environment step. Ours and both loops are timed interleaved (median of 5), so that speed
drift of a shared machine hits them alike.

Ours runs on one device and, when there are several (``scripts/bench.py`` makes one CPU host
device per core), spread over all of them (``FederatedConfig.devices``): XLA:CPU runs each
small per-party matmul on one thread, so a 2-core machine is only fully used through two
devices. On CPU each device trains its parties in groups of ``CPU_PARTY_CHUNK``
(``FederatedConfig.party_chunk``): a group's networks, Adam moments and replay buffers stay in
cache over the local steps. The all-at-once round (``party_chunk=0``) is timed beside it when
a device holds more than one group (``fed_dqn_party_chunk`` rows: the groups' speed-up).

Also reported: achieved FLOP/s of the round (analytic count of the matmul FLOPs of its updates
and acting passes) as a fraction of this machine's float32 matmul peak (best of 5 large
matmuls, measured in the same run); that fraction is the distance to the physical limit. The
same fraction for the loop baseline (``fed_dqn_loop_flops``) bounds the ratio any round can
reach over that loop: ratio <= 1 / (baseline's fraction of peak).
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp

from fedrl.agents.dqn import DQNConfig, EnvFns, make_dqn
from fedrl.envs import hospital
from fedrl.federated.aggregation import Cohort, fedavg, server_update
from fedrl.federated.round import FederatedConfig, make_federated_round, make_server_optimizer

from bench_cases.timing import compiled_round, interleaved_medians

NAME = "fed_dqn"
ENV = EnvFns(reset=hospital.reset, step=hospital.step)
# Parties trained together per device on CPU (2-16 measured alike at K=64 on 2 devices,
# 1.3-1.4x the all-at-once round); 0 (all at once) on an accelerator.
CPU_PARTY_CHUNK = 8


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matmul FLOP/s of this device (an n x n x n matmul, best of ``repeats``:
    a peak is the best the machine does, and a low reading would flatter the fractions)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(f(a, b))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a, b))
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


def forward_flops(cfg: DQNConfig, obs_dim: int, num_actions: int) -> float:
    """Matmul FLOPs of one forward pass of the Q-network on one observation."""
    sizes = (obs_dim,) + tuple(cfg.hidden_sizes) + (num_actions,)
    return float(sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:])))


def update_flops(cfg: DQNConfig, obs_dim: int, num_actions: int) -> float:
    """Matmul FLOPs of one gradient update: forward of the online net on obs, its backward
    (2x the forward: weight and input gradients; the input gradient of the first layer is
    counted though XLA need not compute it, an over-count of < 1 % here), forward of the target
    on next_obs and, for double DQN, of the online net on next_obs."""
    passes = 3 + 1 + (1 if cfg.double_dqn else 0)
    return forward_flops(cfg, obs_dim, num_actions) * passes * cfg.batch_size


def round_flops(cfg: DQNConfig, updates: float, env_steps: float) -> float:
    """Matmul FLOPs of a round: its gradient updates and one acting forward pass per env step."""
    return (updates * update_flops(cfg, hospital.OBS_DIM, hospital.NUM_ACTIONS)
            + env_steps * forward_flops(cfg, hospital.OBS_DIM, hospital.NUM_ACTIONS))


def _baseline_loops(dqn, state, stacked, key, k: int, local_steps: int, device=None) -> dict:
    """The two Python-loop baselines, warmed up (compiled), from the round's ``state``: "loop"
    (over parties, each a jitted single-party scanned training, then the same FedAvg, jitted)
    and "step_loop" (over parties and local steps, each a jitted single-party train step: one
    env step + one update). ``device``: commit their inputs there (e.g. the host CPU on a GPU
    machine), so that every call runs on it."""
    if device is not None:
        state, stacked, key = jax.device_put((state, stacked, key), device)
    fed_cfg = FederatedConfig(num_rounds=1, local_steps=local_steps, devices=1)
    train_one = jax.jit(lambda s, p, kk: dqn.train(ENV, s, p, kk, local_steps))
    server_opt = make_server_optimizer(fed_cfg)
    aggregator = fedavg()

    @jax.jit
    def aggregate(trained_params, weights, glob, opt_state, agg_key):
        stacked_params = jax.tree.map(lambda *p: jnp.stack(p), *trained_params)
        deltas = jax.tree.map(lambda p, g: p - g[None], stacked_params, glob)
        delta, _ = aggregator.update(Cohort(deltas, jnp.stack(weights), jnp.ones(k, bool)),
                                     aggregator.init(glob), agg_key)
        return server_update(glob, delta, opt_state, server_opt)[0]

    parties = [jax.tree.map(lambda x: x[i], state.parties) for i in range(k)]
    params_k = [jax.tree.map(lambda x: x[i], stacked) for i in range(k)]
    glob = state.global_params
    opt_state = server_opt.init(glob)
    party_keys = [jax.random.fold_in(key, i) for i in range(k)]
    out = {}

    def loop():
        outs = [train_one(parties[i].replace(params=glob, target_params=glob), params_k[i],
                          party_keys[i]) for i in range(k)]
        out["outs"] = outs
        return aggregate([o[0].params for o in outs],
                         [o[1]["transitions"].astype(jnp.float32) for o in outs],
                         glob, opt_state, key)

    t0 = time.perf_counter()
    jax.block_until_ready(loop())  # compiles the single-party training and the aggregation
    out["compile_s"] = time.perf_counter() - t0
    step_one = jax.jit(lambda s, p, kk: dqn.train_step(ENV, s, p, kk, jnp.array(True)))

    def step_loop():
        last = None
        for i in range(k):
            s = parties[i].replace(params=glob, target_params=glob)
            for t in range(local_steps):
                s, _ = step_one(s, params_k[i], jax.random.fold_in(party_keys[i], t))
            last = s
        return last.params
    jax.block_until_ready(step_loop())
    out.update(loop=loop, step_loop=step_loop)
    return out


def run(quick: bool = False) -> list[dict]:
    parties_list = (1, 4) if quick else (1, 4, 16, 64)
    local_steps = 32 if quick else 128
    repeats = 2 if quick else 5
    dqn_cfg = DQNConfig(hidden_sizes=(256, 256), batch_size=64, buffer_capacity=4_096,
                        learning_starts=64, train_every=1, target_update_every=250)
    dqn = make_dqn(dqn_cfg, hospital.NUM_ACTIONS)
    peak = matmul_peak(1024 if quick else 2048)
    platform = jax.devices()[0].platform
    num_devices = jax.local_device_count()
    # On an accelerator the loops also run on the host CPU (the GPU target is a ratio
    # over the CPU loop); FEDRL_BENCH_CPU_BASELINE=1 forces these rows on a CPU-only machine
    # (there they repeat the loops: a check of the code path).
    cpu_baseline = platform != "cpu" or os.environ.get("FEDRL_BENCH_CPU_BASELINE") == "1"
    rows = [{"name": "matmul_peak", "params": {"dtype": "float32", "device": platform,
                                               "devices": num_devices},
             "value": peak / 1e9, "unit": "GFLOP/s", "baseline": None, "baseline_value": None,
             "ratio": None}]
    for k in parties_list:
        device_counts = sorted({1, min(num_devices, k)})
        env_params = hospital.make_hospitals(hospital.HospitalConfig(), k, jax.random.key(0))
        stacked = jax.tree.map(lambda x: x[:, None], env_params)
        key = jax.random.key(1)
        env_steps = k * local_steps

        # Ours: one jitted round, on one device and spread over all of them; the first round
        # fills the replay buffers (and is the warm-up).
        chunk = CPU_PARTY_CHUNK if platform == "cpu" else 0
        variants = [(devices, chunk) for devices in device_counts]
        if chunk and k > chunk * max(device_counts):     # a device holds several groups
            variants.append((max(device_counts), 0))
        ours, rounds = {}, {}
        for variant in variants:
            devices, party_chunk = variant
            fed_cfg = FederatedConfig(num_rounds=1, local_steps=local_steps, devices=devices,
                                      party_chunk=party_chunk)
            rnd = make_federated_round(dqn, ENV, stacked, fed_cfg)
            step, state, compile_s = compiled_round(rnd, key)
            holder = {"s": state}

            def one_round(step=step, holder=holder):
                holder["s"], holder["m"] = step(holder["s"], key)
                return holder["m"]
            # more rounds until the replay buffers hold learning_starts transitions, so that
            # the timed rounds (and the loop, which starts from this state) update every step
            for _ in range(-(-dqn_cfg.learning_starts // local_steps)):
                one_round()
            rounds[variant] = one_round
            ours[variant] = (holder, compile_s)
        state = ours[variants[0]][0]["s"]

        loops = _baseline_loops(dqn, state, stacked, key, k, local_steps)
        fns = {**rounds, "loop": loops["loop"], "step_loop": loops["step_loop"]}
        if cpu_baseline:
            cpu_loops = _baseline_loops(dqn, state, stacked, key, k, local_steps,
                                        device=jax.devices("cpu")[0])
            fns.update(cpu_loop=cpu_loops["loop"], cpu_step_loop=cpu_loops["step_loop"])
        loop_compile_s = loops["compile_s"]
        env_step_baselines = [("loop", "python loop over parties"),
                              ("step_loop", "python loop over parties and steps")]
        if cpu_baseline:
            env_step_baselines += [("cpu_" + n, "CPU: " + b) for n, b in env_step_baselines]

        # Rounds and loops interleaved, so that speed drift of a shared machine hits them alike.
        times = interleaved_medians(fns, repeats)
        t_loop = times["loop"]
        n_loop_updates = float(sum(int(o[1]["updates"]) for o in loops["outs"]))

        loop_flops = round_flops(dqn_cfg, n_loop_updates, env_steps) / t_loop
        rows.append({"name": "fed_dqn_loop_flops",
                     "params": {"K": k, "local_steps": local_steps, "batch": 64,
                                "net": "256-256", "devices": 1},
                     "value": loop_flops / 1e9, "unit": "GFLOP/s",
                     "baseline": "matmul peak", "baseline_value": peak / 1e9,
                     "ratio": loop_flops / peak})
        for variant, (holder, compile_s) in ours.items():
            devices, party_chunk = variant
            t_ours = times[variant]
            updates = float(holder["m"]["updates"])  # of the last timed round
            params = {"K": k, "local_steps": local_steps, "batch": 64, "net": "256-256",
                      "devices": devices, "party_chunk": party_chunk,
                      "compile_s": round(compile_s, 2),
                      "loop_compile_s": round(loop_compile_s, 2)}
            if party_chunk == 0 and chunk:
                rows.append({"name": "fed_dqn_party_chunk", "params": params,
                             "value": env_steps / times[(devices, chunk)],
                             "unit": "env steps/s",
                             "baseline": "all parties at once (party_chunk=0)",
                             "baseline_value": env_steps / t_ours,
                             "ratio": t_ours / times[(devices, chunk)]})
            for name, baseline in env_step_baselines:
                rows.append({"name": "fed_dqn_env_steps", "params": params,
                             "value": env_steps / t_ours, "unit": "env steps/s",
                             "baseline": baseline, "baseline_value": env_steps / times[name],
                             "ratio": times[name] / t_ours})
            rows.append({"name": "fed_dqn_updates", "params": params,
                         "value": updates / t_ours, "unit": "updates/s",
                         "baseline": "python loop over parties",
                         "baseline_value": n_loop_updates / t_loop, "ratio": t_loop / t_ours})
            achieved = round_flops(dqn_cfg, updates, env_steps) / t_ours
            rows.append({"name": "fed_dqn_flops", "params": params, "value": achieved / 1e9,
                         "unit": "GFLOP/s", "baseline": "matmul peak",
                         "baseline_value": peak / 1e9, "ratio": achieved / peak})
    return rows
