"""Privacy-utility trade-off of client-level DP-FedAvg on the hospital system.

    python -m experiments.privacy_utility --preset quick --out results/privacy_utility

Federated DQN across hospitals (``experiments.hospital``) with Poisson client sampling (rate q)
and DP-FedAvg (McMahan, Ramage, Talwar, Zhang, ICLR 2018) at several noise multipliers z: each
party's update is clipped to L2 norm C, the server adds N(0, (zC)^2) to the sum and divides by
the expected cohort q*N. Each DP run reports its epsilon at ``delta`` from the PLD accountant of
``dp-accounting`` (RDP beside it) over the rounds run. Every setting also runs through
mask-based secure aggregation (Bonawitz et al., CCS 2017; the server adds the noise to the
unmasked sum), which must give the same result up to fixed-point quantization: the table
reports the largest parameter difference between the two.

Baselines beside it: FedAvg without DP (plain and secure), local-only DQN (no model leaves a
hospital) and the heuristic schedulers.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from experiments import hospital as hx
from experiments.common import Experiment, Report, RunContext, main, markdown_table
from fedrl.agents.dqn import DQNConfig
from fedrl.config import require, require_in_range
from fedrl.envs import hospital
from fedrl.federated.aggregators import AggregatorConfig, build_aggregator
from fedrl.federated.round import FederatedConfig
from fedrl.results import atomic_save_figure


@dataclasses.dataclass(frozen=True)
class PrivacyUtilityConfig:
    base: hx.HospitalExperimentConfig = hx.HospitalExperimentConfig()
    noise_multipliers: tuple[float, ...] = (0.3, 1.0)
    clip_norm: float = 1.0
    delta: float = 1e-5
    secure: bool = True                  # also run every setting through secure aggregation
    secure_value_bound: float = 4.0      # fixed-point range of a plain (unclipped) update coordinate
    heuristics: tuple[str, ...] = ("random", "fifo", "strict_priority")
    local_baseline: bool = True          # also train local-only DQNs (no model leaves a hospital)

    def validate(self) -> None:
        require(len(self.noise_multipliers) > 0 and all(z > 0 for z in self.noise_multipliers),
                f"noise_multipliers must be positive, got {self.noise_multipliers}")
        require(self.base.fed.sampling == "poisson",
                "base.fed.sampling must be 'poisson': the DP accountant models Poisson client "
                "sampling (fixed-size cohorts would under-report epsilon)")
        require(self.clip_norm > 0, "clip_norm must be > 0")
        require_in_range("delta", self.delta, 0.0, 1.0, low_open=True, high_open=True)
        bad = [h for h in self.heuristics if h not in hospital.HEURISTICS]
        require(not bad, f"heuristics has unknown entries {bad}")


def _base(num_hospitals, dqn, rounds, local_steps, q, episodes, eval_every):
    return hx.HospitalExperimentConfig(
        num_hospitals=num_hospitals, dqn=dqn,
        fed=FederatedConfig(num_rounds=rounds, local_steps=local_steps, sampling="poisson",
                            sampling_rate=q),
        eval_episodes=episodes, eval_every=eval_every, checkpoint_every=eval_every)


def smoke() -> PrivacyUtilityConfig:
    dqn = DQNConfig(hidden_sizes=(32, 32), batch_size=32, buffer_capacity=2_000,
                    learning_starts=64, epsilon_decay_steps=200, target_update_every=100)
    return PrivacyUtilityConfig(base=_base(3, dqn, 2, 64, 0.7, 1, 1), noise_multipliers=(1.0,),
                                heuristics=("random", "strict_priority"))


def quick() -> PrivacyUtilityConfig:
    # a hospital runs ~q x rounds x local_steps = 864 steps in expectation: exploration decays
    # over 800 of them and learning starts after one round's worth (144), so the models are
    # trained (session 11 review: with 2,000 / 500 epsilon was still ~0.59 at the end and a
    # party made ~180 updates in the whole run; same wall time)
    dqn = dataclasses.replace(hx.quick().dqn, epsilon_decay_steps=800, learning_starts=144)
    return PrivacyUtilityConfig(base=_base(8, dqn, 12, 144, 0.5, 2, 4),
                                noise_multipliers=(0.1, 1.0))


def paper() -> PrivacyUtilityConfig:
    dqn = hx.paper().dqn
    return PrivacyUtilityConfig(base=_base(50, dqn, 300, 288, 0.2, 10, 20),
                                noise_multipliers=(0.3, 0.7, 1.0, 2.0, 5.0))


PRESETS = {"smoke": smoke, "quick": quick, "paper": paper}


def settings(cfg: PrivacyUtilityConfig) -> list[tuple[str, Any, dict | None]]:
    """(label, aggregator, privacy record) of every run, in table order."""
    k, fed = cfg.base.num_hospitals, cfg.base.fed
    base = AggregatorConfig(clip_norm=cfg.clip_norm, delta=cfg.delta,
                            secure_value_bound=cfg.secure_value_bound)
    kinds = [("fedavg", "fedavg", 1.0)] + ([("fedavg+secure", "secure", 1.0)] if cfg.secure else [])
    for z in cfg.noise_multipliers:
        kinds.append((f"dp z={z:g}", "dp", z))
        if cfg.secure:
            kinds.append((f"dp+secure z={z:g}", "dp_secure", z))
    return [(label, *build_aggregator(dataclasses.replace(base, kind=kind, noise_multiplier=z),
                                      k, fed))
            for label, kind, z in kinds]


def run(cfg: PrivacyUtilityConfig, seed: int, ctx: RunContext) -> Report:
    base = cfg.base
    master = jax.random.key(seed)
    env_params = hospital.make_hospitals(base.env, base.num_hospitals,
                                         jax.random.fold_in(master, 0))
    eval_key = jax.random.fold_in(master, 1_000_003)
    train_key = jax.random.fold_in(master, 10)   # the same for every setting: paired comparison
    methods: dict[str, dict[str, Any]] = {}
    finals: dict[str, Any] = {}
    compile_s = 0.0

    for name, per_h in hx.evaluate_heuristics(cfg.heuristics, env_params, eval_key,
                                              base.eval_episodes).items():
        methods[name] = {"kind": "heuristic", **hx.mean_metrics(per_h)}

    runs = ([("local", None, None)] if cfg.local_baseline else []) + settings(cfg)
    for label, aggregator, record in runs:
        method = "local" if label == "local" else "fedavg"
        saved = ctx.done(label)
        if saved is None:
            state, dqn, _, timing = hx.train_method(method, base, env_params, train_key, ctx,
                                                    aggregator=aggregator, eval_key=eval_key,
                                                    label=label)
            compile_s += timing["compile_s"]
            params, shared = hx.eval_params(method, state)
            metrics = hx.mean_metrics(hx.evaluate_dqn(dqn, params, env_params, eval_key,
                                                      base.eval_episodes, shared_model=shared))
            if shared:  # kept in memory only, for the plain-vs-secure comparison
                finals[label] = jax.tree.map(np.asarray, params)
            saved = {"kind": "dqn", **metrics, "privacy": record,
                     "train_time_s": timing["train_s"], "compile_time_s": timing["compile_s"],
                     "devices": timing["devices"]}
            ctx.finish(label, saved)
        methods[label] = saved

    for label in list(methods):
        if label.startswith("dp+secure") or label == "fedavg+secure":
            plain = label.replace("+secure", "")
            if finals.get(plain) is not None and finals.get(label) is not None:
                diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a)
                                                                      - np.asarray(b)))),
                                     finals[label], finals[plain])
                methods[label]["max_param_diff_vs_plain"] = max(jax.tree.leaves(diffs))

    table = _table(cfg, methods)
    _plot(ctx.out_dir, methods)
    return Report(methods=methods, table=table, compile_time_s=compile_s,
                  extra={"delta": cfg.delta})


def _table(cfg, methods) -> str:
    header = ["method", "epsilon (PLD)", "epsilon (RDP)", "acuity-wtd wait", "LWBS", "return",
              "max |param diff| vs plain"]
    rows = []
    for name, m in methods.items():
        rec = m.get("privacy")
        eps = "inf (no DP)" if m.get("kind") == "dqn" and name != "local" and rec is None else "-"
        rows.append([name, rec["epsilon"] if rec else eps, rec["epsilon_rdp"] if rec else eps,
                     m["acuity_weighted_wait"], m["lwbs_rate"], m["episode_return"],
                     f"{m['max_param_diff_vs_plain']:.2e}"
                     if "max_param_diff_vs_plain" in m else "-"])
    fed = cfg.base.fed
    return "\n".join([
        f"### Privacy vs utility: DP-FedAvg on {cfg.base.num_hospitals} hospitals, Poisson "
        f"q={fed.sampling_rate:g}, {fed.num_rounds} rounds, C={cfg.clip_norm:g}, "
        f"delta={cfg.delta:g}\n",
        markdown_table(header, rows, digits=4),
        "\nepsilon: client-level (add/remove one hospital), dp-accounting PLD (RDP beside it). "
        "`local` shares no model. `+secure`: mask-based secure aggregation in Z_2^32, same "
        "keys as the plain run; each round's aggregate differs from the plain one by fixed-point "
        "rounding (step 1/scale) and, with DP, by the tighter client clip C' = (C - sqrt(D)/scale)"
        "(1 - 1e-5) that keeps the rounded update's norm <= C (so the recorded epsilon holds); "
        "training over the rounds amplifies both: the last column is the largest "
        "final-parameter difference.\n"])


def _plot(out_dir, methods):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    dp = [(m["privacy"]["epsilon"], m["acuity_weighted_wait"], n) for n, m in methods.items()
          if m.get("privacy") and "+secure" not in n]
    if dp:
        dp.sort()
        ax.plot([d[0] for d in dp], [d[1] for d in dp], "o-", label="DP-FedAvg")
        for eps, wait, name in dp:
            ax.annotate(name.replace("dp ", ""), (eps, wait), fontsize=7)
    styles = {"fedavg": ("tab:green", "FedAvg, no DP"), "local": ("tab:orange", "local only"),
              "strict_priority": ("black", "strict priority"), "random": ("red", "random")}
    for name, (color, text) in styles.items():
        if name in methods:
            ax.axhline(methods[name]["acuity_weighted_wait"], color=color, ls="--", lw=1,
                       label=text)
    ax.set_xscale("log")
    ax.set_yscale("log")  # DP runs can be 10x worse than the baselines
    ax.set_xlabel("epsilon (PLD, delta=1e-5)")
    ax.set_ylabel("acuity-weighted wait (min)")
    ax.set_title("Privacy-utility trade-off (lower wait is better)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_save_figure(fig, out_dir / "privacy_utility.png", dpi=120)
    plt.close(fig)


EXPERIMENT = Experiment(name="privacy_utility", presets=PRESETS, run=run,
                        description="DP-FedAvg privacy-utility trade-off on the hospital system.")

if __name__ == "__main__":
    raise SystemExit(main(EXPERIMENT))
