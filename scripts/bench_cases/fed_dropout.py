"""Benchmark ``fed_dropout``: what Federated Dropout (Caldas et al., arXiv:1812.07210, 2018;
``fed.submodel_rate``) saves in local compute and traffic, against the full-model round
measured in the same run.

The federated round of the ``fed_dqn`` case (hospital environment, the seed's 256-256
Q-network, batch 64, one update per environment step, K = 16 parties over every host device
in groups of ``CPU_PARTY_CHUNK`` on CPU) with the parties training sub-models that drop 25 %
and 50 % of every hidden layer's units (one sub-model per round, the default draw), timed
interleaved with the same round on the full model (median of 5). Rows: environment steps per
second against the full round, and the parameters each party receives and sends per round
against the full model's. The cut and paste of weights, target network and Adam moments are
part of the timed round.
"""
from __future__ import annotations

import jax

from fedrl.agents.dqn import DQNConfig, make_dqn
from fedrl.envs import hospital
from fedrl.federated import submodel
from fedrl.federated.round import FederatedConfig, make_federated_round

from bench_cases.fed_dqn import CPU_PARTY_CHUNK, ENV
from bench_cases.timing import compiled_round, interleaved_medians

NAME = "fed_dropout"
RATES = (0.0, 0.25, 0.5)


def run(quick: bool = False) -> list[dict]:
    k = 4 if quick else 16
    local_steps = 32 if quick else 128
    repeats = 2 if quick else 5
    dqn_cfg = DQNConfig(hidden_sizes=(256, 256), batch_size=64, buffer_capacity=4_096,
                        learning_starts=64, train_every=1, target_update_every=250)
    dqn = make_dqn(dqn_cfg, hospital.NUM_ACTIONS)
    env_params = hospital.make_hospitals(hospital.HospitalConfig(), k, jax.random.key(0))
    stacked = jax.tree.map(lambda x: x[:, None], env_params)
    key = jax.random.key(1)
    chunk = CPU_PARTY_CHUNK if jax.devices()[0].platform == "cpu" else 0
    fns, compile_s, devices = {}, {}, 0
    for rate in RATES:
        cfg = FederatedConfig(num_rounds=1, local_steps=local_steps, party_chunk=chunk,
                              submodel_rate=rate)
        rnd = make_federated_round(dqn, ENV, stacked, cfg)
        devices = rnd.num_devices
        step, state, compile_s[rate] = compiled_round(rnd, key)
        holder = {"s": state}

        def one_round(step=step, holder=holder):
            holder["s"], metrics = step(holder["s"], key)
            return metrics
        # fill the replay buffers past learning_starts, so that every timed step updates
        for _ in range(-(-dqn_cfg.learning_starts // local_steps)):
            one_round()
        fns[rate] = one_round
    times = interleaved_medians(fns, repeats)
    widths = dqn_cfg.hidden_sizes
    model = jax.eval_shape(lambda k: dqn.init_params(k, hospital.OBS_DIM), jax.random.key(0))
    full_params = sum(int(x.size) for x in jax.tree.leaves(model))
    env_steps = k * local_steps
    rows = []
    for rate in RATES[1:]:
        kept = submodel.kept_units(widths, rate)
        params = {"K": k, "local_steps": local_steps, "net": "256-256", "batch": 64,
                  "submodel_rate": rate, "kept_units": list(kept), "devices": devices,
                  "party_chunk": chunk, "compile_s": round(compile_s[rate], 2),
                  "full_compile_s": round(compile_s[0.0], 2)}
        rows.append({"name": "fed_dropout_env_steps", "params": params,
                     "value": env_steps / times[rate], "unit": "env steps/s",
                     "baseline": "full model (submodel_rate=0)",
                     "baseline_value": env_steps / times[0.0],
                     "ratio": times[0.0] / times[rate]})
        sub_params = submodel.num_submodel_params(model, kept)
        rows.append({"name": "fed_dropout_params_per_party", "params": params,
                     "value": float(sub_params), "unit": "parameters each way",
                     "baseline": "full model", "baseline_value": float(full_params),
                     "ratio": full_params / sub_params})
    return rows
