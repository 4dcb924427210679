"""One federated round of DQN training as ONE jitted function.

FedAvg (McMahan et al., AISTATS 2017) applied to DQN agents, one per party (hospital):

1. client sampling: a fixed-size cohort of ``clients_per_round`` parties drawn without
   replacement, or Poisson sampling with rate q (each party independently; the form DP-FedAvg's
   accounting assumes, McMahan et al. ICLR 2018);
2. broadcast: each selected party's online network (and, by default, its target network) is
   set to the global weights;
3. local training of all selected parties at once: a ``lax.scan`` over local environment
   steps of a ``vmap`` over parties (``DQN.train_parties``); parties may get different local
   budgets (system heterogeneity: adaptive local epochs), realised by masking steps, so shapes
   stay static. With several devices the cohort is split across them (``shard_map`` over a
   ``parties`` mesh axis, see ``FederatedConfig.devices``);
4. each party's update is its trained weights minus the broadcast weights; parties that drop
   after training (``dropout_rate``), stragglers that miss the deadline and parties whose
   update is not finite (NaN / inf: diverged training, not sent) are masked out;
5. aggregation through an :class:`~fedrl.federated.aggregation.AggregationTransform` (plain
   FedAvg weighted by local sample counts by default; DP or secure chains plug in here) and a
   server optimizer step (``server_update``).

Every key is derived from the round key with ``fold_in`` (per round and per party id), so a run
is reproducible and parties never share exploration noise. ``aggregation="none"`` gives the
local-only baseline (no broadcast, no sharing).

System heterogeneity (seed 000's "Variable Resources" and "Straggler Handling"; all off by
default, the default round being bit-identical to the round without them):

* ``min_local_fraction`` < 1: each round party k's budget is ceil(U[min_frac, 1] * local_steps)
  steps (random per-round resources);
* ``party_speeds`` and ``round_deadline``: party k can run at most
  min(local_steps, floor(speed_k * deadline * local_steps)) steps before the server's deadline
  (adaptive local steps; :func:`local_step_caps`, static and deterministic); the budget is
  the smaller of this cap and the random one; a party whose cap is 0 is a straggler: it
  trains nothing and is masked out like a dropout (metric ``stragglers``; ``party_steps``
  holds each party's steps of the round);
* a party whose update has a NaN / inf is excluded before aggregation for every aggregator
  (metric ``nonfinite_updates``; why it keeps DP's guarantee: :func:`_client_updates`);
* a round without participants (all stragglers, dropped or excluded), or with fewer than the
  aggregator's ``min_participants`` (secure aggregation aborts below 2), leaves the global
  model and the server optimizer's state as they were (FedAvgM's momentum or FedAdam's moments
  would otherwise move the model on a zero update), except under DP, whose noise is a release
  of every round (``AggregationTransform.releases_every_round``);
* FedNova (Wang et al., NeurIPS 2020; ``AggregatorConfig(kind="fednova")``) averages
  Delta_k / tau_k with equal shares p_k, tau_k a party's local gradient updates
  (``Cohort.local_updates``), so that unequal budgets do not bias the global model towards
  the fast parties;
* ``max_staleness`` = S > 0: bounded-staleness asynchronous aggregation simulated in rounds,
  buffered like FedBuff (Nguyen et al., AISTATS 2022: the server applies the weighted mean of
  the round's stale updates through its optimizer) with FedAsync's polynomial staleness
  weight (Xie, Koyejo, Gupta 2019), not FedAsync's model mixing: the state is an
  :class:`AsyncFederatedState` holding
  the S previous global models; party k trains from the model s_k rounds old
  (:func:`party_staleness`, from its speed) and its update is scaled by (1 + s_k)^-a
  (:func:`staleness_weight`) before the aggregation.

Federated Dropout (Caldas et al., arXiv:1812.07210, 2018; seed 000's "train smaller
subnetworks"; off by default): with ``submodel_rate`` = p > 0 each selected party trains a
sub-model keeping round((1 - p) * width) random units of every hidden layer (one subset per
round, or one per party and round); its weights, target network and Adam moments are cut out of
the full ones before local training and written back after it, so its update is zero outside
the sub-model; with per-party subsets the aggregation averages each coordinate over the parties
that trained it (``coverage``) or counts the others as zero updates (``zero_fill``). See
:mod:`fedrl.federated.submodel`.

Two non-IID variants (both off by default; the default round is bit-identical to the round
without them):

* ``personal_layers`` = n > 0, FedPer (Arivazhagan et al., "Federated Learning with
  Personalization Layers", arXiv:1912.00818, 2019; :mod:`fedrl.federated.personalization`):
  the last n Dense layers of each party's Q-network are its own. The broadcast (2) overwrites
  only the shared body, online and (with ``sync_target_each_round``) target nets getting the
  global body with the party's own online head; only the shared leaves are sent, clipped,
  quantized and averaged (4-5); the server's copy of the head leaves keeps its initial value
  (it is never broadcast). Each party acts with the global body + its own head
  (:func:`party_models`).
* ``num_clusters`` = C > 1, IFCA (Ghosh et al., "An Efficient Framework for Clustered
  Federated Learning", NeurIPS 2020; :mod:`fedrl.federated.clustering`): the state is a
  :class:`ClusteredFederatedState` with C models (leading axis C, independent random
  initialisations) and each party's cluster. Before the broadcast every sampled party
  evaluates each cluster model's TD loss on one batch of its replay buffer and joins the
  argmin (a party whose buffer holds less than a batch keeps its cluster); it receives that
  cluster's model, and the aggregation and server step run per cluster (``vmap`` over
  clusters, mask = participating & member, key ``fold_in(k_agg, c)``, one server optimizer
  state per cluster). A cluster without participants keeps its model and server state.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fedrl.agents.dqn import DQN, DQNState, EnvFns, tree_select
from fedrl.config import require, require_in_range, require_positive
from fedrl.federated import clustering, personalization, submodel
from fedrl.federated.aggregation import (AggregationTransform, Cohort, finite_updates,
                                         fedadam_optimizer, fedavg, fedavgm_optimizer,
                                         server_update)
from fedrl.sharding import local_mesh, pad_leading, padded_size, split_leading, unpad_leading

PyTree = Any


@dataclasses.dataclass(frozen=True)
class FederatedConfig:
    """Knobs of the federated protocol (the DQN's own knobs live in ``DQNConfig``)."""
    num_rounds: int = 40
    local_steps: int = 288                      # env steps per party per round
    sampling: Literal["fixed", "poisson"] = "fixed"
    clients_per_round: int = 0                  # fixed cohort size; 0 = every party
    sampling_rate: float = 1.0                  # Poisson sampling rate q
    dropout_rate: float = 0.0                   # P(a selected party drops after training)
    min_local_fraction: float = 1.0             # local budget ~ U[min_frac, 1] * local_steps
    aggregation: Literal["fedavg", "none"] = "fedavg"
    server_optimizer: Literal["sgd", "momentum", "adam"] = "sgd"
    server_learning_rate: float | None = None   # None: 1.0 for sgd / momentum, 1e-2 for adam
    server_momentum: float = 0.9
    # Round start: the target network is set to the weights the party starts the round from
    # (the broadcast global weights; a local-only party's own weights when
    # dqn.target_update_every=0, "round sync only") [reconstructed].
    sync_target_each_round: bool = True
    # Round start: fresh Adam moments for each selected party (default: a party's moments
    # persist across rounds while its weights are overwritten by the broadcast) [reconstructed].
    reset_optimizer_each_round: bool = False
    devices: int = 0                            # devices to spread parties over; 0 = all
                                                # local ones, at most one per party
    update_gating: Literal["switch", "mask"] = "switch"   # see DQN.train_parties
    # Parties trained together on each device: groups of party_chunk one after another (the
    # same results up to float rounding; a group's state stays in cache over the local steps:
    # faster on CPU with many parties, see the fed_dqn benchmark); 0 = all at once.
    party_chunk: int = 0
    # FedPer (Arivazhagan et al. 2019): the last n Dense layers of each party's Q-network stay
    # local (not broadcast, not aggregated, not sent); 0 = plain FedAvg. See personalization.py.
    personal_layers: int = 0
    # IFCA (Ghosh et al. 2020): the server keeps C models and each party joins the one with the
    # smallest TD loss on its replay buffer; 1 = plain FedAvg. See clustering.py.
    num_clusters: int = 1
    # System heterogeneity (seed 000: "Variable Resources: adaptive local epochs", "Straggler
    # Handling: timeout"); see local_step_caps. party_speeds: relative compute speed of each
    # party (env steps per unit time, > 0), one per party; None = all equal (1).
    # round_deadline: the server waits this long each round, in units of local_steps at speed
    # 1; party k then runs min(local_steps, floor(speed_k * deadline * local_steps)) steps, and
    # a party too slow for even one step is a straggler that misses the round. None = no
    # deadline (synchronous FedAvg waits for everyone: speeds then change nothing).
    party_speeds: tuple[float, ...] | None = None
    round_deadline: float | None = None
    # Bounded-staleness asynchronous aggregation simulated in rounds (FedBuff-style buffered
    # mean with FedAsync's staleness weight, Xie, Koyejo, Gupta 2019): party k trains from the
    # global model s_k <= max_staleness rounds old (s_k from its speed, see party_staleness;
    # needs party_speeds) and its update is scaled by (1 + s_k)^-a, a = staleness_exponent.
    # 0 = synchronous rounds; at most num_rounds.
    max_staleness: int = 0
    staleness_exponent: float = 0.5
    # Federated Dropout (Caldas et al. 2018, seed 000's "train smaller subnetworks"): each
    # selected party trains a sub-model that keeps round((1 - rate) * width) random units of
    # every hidden layer; 0 = off (the full model). Draw: one subset per round shared by the
    # cohort (per_round) or one per party and round (per_party). Coverage: each coordinate is
    # averaged over the parties that trained it; zero_fill: an untrained coordinate counts as
    # a zero update (needed by DP and secure aggregation; the same result under per_round).
    # Rescale: the kept activations are scaled by width / kept while training (inverted
    # dropout). All four [reconstructed]; see fedrl/federated/submodel.py.
    submodel_rate: float = 0.0
    submodel_draw: Literal["per_round", "per_party"] = "per_round"
    submodel_aggregation: Literal["coverage", "zero_fill"] = "coverage"
    submodel_rescale: bool = True

    def validate(self) -> None:
        require(self.num_rounds >= 1, f"fed.num_rounds must be >= 1, got {self.num_rounds}")
        require(self.local_steps >= 1, f"fed.local_steps must be >= 1, got {self.local_steps}")
        require(self.sampling in ("fixed", "poisson"),
                f"fed.sampling must be 'fixed' or 'poisson', got {self.sampling!r}")
        require(self.clients_per_round >= 0, "fed.clients_per_round must be >= 0 (0 = all)")
        require_in_range("fed.sampling_rate", self.sampling_rate, 0.0, 1.0, low_open=True)
        require_in_range("fed.dropout_rate", self.dropout_rate, 0.0, 1.0, high_open=True)
        require_in_range("fed.min_local_fraction", self.min_local_fraction, 0.0, 1.0,
                         low_open=True)
        require(self.aggregation in ("fedavg", "none"),
                f"fed.aggregation must be 'fedavg' or 'none', got {self.aggregation!r}")
        require(self.server_optimizer in ("sgd", "momentum", "adam"),
                f"fed.server_optimizer must be sgd|momentum|adam, got {self.server_optimizer!r}")
        if self.server_learning_rate is not None:
            require_positive("fed.server_learning_rate", self.server_learning_rate)
        require_in_range("fed.server_momentum", self.server_momentum, 0.0, 1.0, high_open=True)
        require(self.devices >= 0, f"fed.devices must be >= 0 (0 = all local devices), "
                                   f"got {self.devices}")
        require(self.update_gating in ("switch", "mask"),
                f"fed.update_gating must be 'switch' or 'mask', got {self.update_gating!r}")
        for name, low in (("personal_layers", 0), ("num_clusters", 1), ("party_chunk", 0)):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= low,
                    f"fed.{name} must be an integer >= {low}, got {value!r}")
        if self.party_speeds is not None:
            speeds = self.party_speeds
            require(isinstance(speeds, (tuple, list)) and len(speeds) >= 1
                    and all(_is_positive_number(v) for v in speeds),
                    f"fed.party_speeds must be None or a non-empty tuple of finite numbers > 0 "
                    f"(one relative speed per party), got {speeds!r}")
        if self.round_deadline is not None:
            require(_is_positive_number(self.round_deadline),
                    f"fed.round_deadline must be None or a finite number > 0 (in units of "
                    f"local_steps at speed 1), got {self.round_deadline!r}")
        require(isinstance(self.max_staleness, int) and not isinstance(self.max_staleness, bool)
                and self.max_staleness >= 0,
                f"fed.max_staleness must be an integer >= 0, got {self.max_staleness!r}")
        require(self.max_staleness <= self.num_rounds,
                f"fed.max_staleness={self.max_staleness} exceeds fed.num_rounds="
                f"{self.num_rounds}: no update can be older than the run (the state would keep "
                "that many copies of the model)")
        require(isinstance(self.staleness_exponent, (int, float))
                and not isinstance(self.staleness_exponent, bool)
                and math.isfinite(self.staleness_exponent) and self.staleness_exponent >= 0,
                f"fed.staleness_exponent must be a finite number >= 0, got "
                f"{self.staleness_exponent!r}")
        require(self.max_staleness == 0 or (self.personal_layers == 0
                                            and self.num_clusters == 1),
                "fed.max_staleness > 0 (asynchronous aggregation) with fed.personal_layers / "
                "fed.num_clusters is not implemented (a local-only run, fed.aggregation="
                "'none', ignores it: nothing is shared)")
        require(not isinstance(self.submodel_rate, (bool, np.bool_)),
                f"fed.submodel_rate must be a number (the share of hidden units each party's "
                f"sub-model drops; 0 = off), got {self.submodel_rate!r}")
        require_in_range("fed.submodel_rate", self.submodel_rate, 0.0, 1.0, high_open=True)
        require(self.submodel_aggregation in ("coverage", "zero_fill"),
                f"fed.submodel_aggregation must be 'coverage' or 'zero_fill', got "
                f"{self.submodel_aggregation!r}")
        require(self.submodel_draw in ("per_round", "per_party"),
                f"fed.submodel_draw must be 'per_round' or 'per_party', got "
                f"{self.submodel_draw!r}")
        require(isinstance(self.submodel_rescale, (bool, np.bool_)),
                f"fed.submodel_rescale must be true or false, got {self.submodel_rescale!r}")
        require(self.submodel_rate == 0 or (self.aggregation == "fedavg"
                                            and self.personal_layers == 0
                                            and self.num_clusters == 1
                                            and self.max_staleness == 0),
                "fed.submodel_rate > 0 (federated dropout) needs fed.aggregation='fedavg' and is "
                "not implemented with fed.personal_layers, fed.num_clusters or "
                "fed.max_staleness")
        require(self.personal_layers == 0 or self.num_clusters == 1,
                "fed.personal_layers > 0 with fed.num_clusters > 1 (FedPer heads inside IFCA "
                "clusters) is not implemented: use one of them")
        require(self.aggregation == "fedavg" or (self.personal_layers == 0
                                                 and self.num_clusters == 1),
                "fed.personal_layers and fed.num_clusters need fed.aggregation='fedavg' (a "
                "local-only run shares nothing to personalize or cluster)")


def _is_positive_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


# floor(speed * deadline * local_steps) in float64: a product that is an integer on paper
# (0.29 * 100) may land just below it; this relative slack rounds it up to that integer.
_CAP_SLACK = 1e-9


def local_step_caps(cfg: FederatedConfig, num_parties: int) -> np.ndarray:
    """[K] int: the most local steps party k can run before the round deadline,
    ``min(local_steps, floor(speed_k * round_deadline * local_steps))`` (``local_steps`` for
    everyone without a deadline); 0 marks a straggler, which misses every round.

    Adaptive local epochs under a timeout (seed 000's "Variable Resources" and "Straggler
    Handling"; the deadline-based partial work of FedProx, Li et al., MLSys 2020, and the
    variable tau_k of FedNova, Wang et al., NeurIPS 2020) [reconstructed: speeds are static
    per party, deterministic given the config]. The round combines it with
    ``min_local_fraction``'s random budget by taking the smaller of the two: the random draw
    models the share of its workload a party's resources allow this round, the cap the work
    its speed allows before the deadline (two independent limits) [reconstructed].
    Raises ConfigError when ``party_speeds`` does not have one entry per party.
    """
    cfg.validate()
    speeds = cfg.party_speeds
    require(speeds is None or len(speeds) == num_parties,
            f"fed.party_speeds has {0 if speeds is None else len(speeds)} entries but the "
            f"federation has {num_parties} parties (one relative speed per party)")
    if cfg.round_deadline is None:
        return np.full((num_parties,), cfg.local_steps, np.int32)
    speeds = np.ones(num_parties) if speeds is None else np.asarray(speeds, np.float64)
    work = speeds * float(cfg.round_deadline) * cfg.local_steps
    return np.minimum(cfg.local_steps, np.floor(work * (1 + _CAP_SLACK))).astype(np.int32)


def party_staleness(cfg: FederatedConfig, num_parties: int) -> np.ndarray:
    """[K] int: how many rounds old the global model is that party k trains from, under
    bounded-staleness asynchronous aggregation (``fed.max_staleness`` = S > 0):
    ``s_k = min(S, ceil(1 / speed_k) - 1)`` -- a party that needs 1 / speed_k rounds of wall
    clock for its local work sends an update computed from the model it received that many
    rounds earlier, less one [reconstructed: deterministic, from the static speeds; parties at
    speed >= 1 are fresh]. Zeros when S = 0 or without ``party_speeds``.
    """
    cfg.validate()
    if cfg.max_staleness == 0 or cfg.party_speeds is None:
        return np.zeros((num_parties,), np.int32)
    require(len(cfg.party_speeds) == num_parties,
            f"fed.party_speeds has {len(cfg.party_speeds)} entries but the federation has "
            f"{num_parties} parties (one relative speed per party)")
    rounds = np.ceil(1.0 / np.asarray(cfg.party_speeds, np.float64) * (1 - _CAP_SLACK))
    return np.clip(rounds - 1, 0, cfg.max_staleness).astype(np.int32)


def staleness_weight(staleness: jax.Array, exponent: float) -> jax.Array:
    """FedAsync's polynomial staleness function (Xie, Koyejo, Gupta, "Asynchronous Federated
    Optimization", arXiv:1903.03934, 2019): s -> (1 + s)^-a; 1 for a fresh update."""
    return jnp.power(1.0 + staleness.astype(jnp.float32), -float(exponent))


# Server learning rate when ``fed.server_learning_rate`` is None: FedAvg / FedAvgM apply the
# averaged update as it is (lr 1); FedAdam normalises it per coordinate, so with lr 1 every
# weight would move by ~1 per round: 1e-2 is the default of Reddi et al. (ICLR 2021) and of
# ``fedadam_optimizer``.
DEFAULT_SERVER_LEARNING_RATE = {"sgd": 1.0, "momentum": 1.0, "adam": 1e-2}


def server_learning_rate(cfg: FederatedConfig) -> float:
    """The configured server learning rate, or the optimizer's default when it is None."""
    if cfg.server_learning_rate is not None:
        return float(cfg.server_learning_rate)
    return DEFAULT_SERVER_LEARNING_RATE[cfg.server_optimizer]


def make_server_optimizer(cfg: FederatedConfig) -> optax.GradientTransformation:
    """Plain FedAvg (sgd, lr 1), FedAvgM (momentum) or FedAdam (Reddi et al., ICLR 2021)."""
    lr = server_learning_rate(cfg)
    if cfg.server_optimizer == "sgd":
        return optax.sgd(lr)
    if cfg.server_optimizer == "momentum":
        return fedavgm_optimizer(lr, cfg.server_momentum)
    return fedadam_optimizer(lr)


@struct.dataclass
class FederatedState:
    global_params: PyTree      # FedPer: the server's copy of the personal leaves is the
                               # initial head, never updated (parties never send theirs)
    server_opt_state: optax.OptState
    aggregator_state: PyTree
    parties: DQNState          # stacked, leading axis K
    round: jax.Array           # int32


@struct.dataclass
class AsyncFederatedState(FederatedState):
    """Bounded-staleness asynchronous aggregation (``fed.max_staleness`` = S > 0):
    ``history`` holds the S previous global models, leading axis S, ``history[j]`` the model
    of j + 1 rounds ago (the current one is ``global_params``). With S = 0 the round keeps the
    plain :class:`FederatedState`."""
    history: PyTree


@struct.dataclass
class ClusteredFederatedState(FederatedState):
    """IFCA (``fed.num_clusters`` = C > 1): ``global_params``, ``server_opt_state`` and
    ``aggregator_state`` carry a leading cluster axis C (one server per cluster), and
    ``clusters`` [K] int32 is each party's last chosen cluster. With C = 1 the round keeps the
    plain :class:`FederatedState` (same pytree, same checkpoints)."""
    clusters: jax.Array        # [K] int32


def party_models(state: FederatedState, cfg: FederatedConfig) -> PyTree:
    """The Q-network each party acts with after the broadcast, stacked [K, ...]: the global
    model (FedAvg), the global body with the party's own head (FedPer), or the model of the
    party's last chosen cluster (IFCA). Evaluation of personalized methods uses these."""
    num_parties = jax.tree.leaves(state.parties.steps)[0].shape[0]
    if isinstance(state, ClusteredFederatedState):
        return _take(state.global_params, state.clusters)
    models = _broadcast(state.global_params, num_parties)
    if cfg.personal_layers:
        mask = personalization.personal_mask(state.global_params, cfg.personal_layers)
        models = personalization.merge(mask, state.parties.params, models)
    return models


@struct.dataclass
class FederatedRound:
    """``init(key) -> FederatedState`` and ``step(state, key) -> (state, metrics)`` (jitted)."""
    init: Callable = struct.field(pytree_node=False)
    step: Callable = struct.field(pytree_node=False)
    num_parties: int = struct.field(pytree_node=False)
    cohort_size: int = struct.field(pytree_node=False)
    num_devices: int = struct.field(pytree_node=False, default=1)


def _broadcast(tree: PyTree, n: int) -> PyTree:
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), tree)


def _take(tree: PyTree, idx: jax.Array) -> PyTree:
    return jax.tree.map(lambda x: x[idx], tree)


def _client_updates(trained: PyTree, start: PyTree, participating: jax.Array
                    ) -> tuple[PyTree, jax.Array, jax.Array]:
    """Each party's update (``trained`` [K, ...] minus ``start``, [K, ...] or one model
    broadcast), after the check a real client runs before sending: a party whose trained
    weights hold a NaN / inf (diverged local training) sends nothing -- its update is zeroed
    and it is masked out like a dropout (``0 * NaN`` is NaN: masking alone would not keep it
    out of a sum). For FedAvg and the secure mean this is a dropout (the mean renormalises over
    the others); the secure sum never encodes the NaN. Under DP-FedAvg it keeps the guarantee:
    the denominator is the fixed expected cohort q*N, so excluding a party is exactly that party
    sending the zero update, which lies inside the clip ball; the sum's sensitivity stays C and
    the noise z*C gives the accounted epsilon (whether a party is excluded is a function of its
    own data only). Returns (updates, participating, number
    of parties excluded).

    The check reads the trained weights, not the difference: with finite start weights the two
    agree (short of an overflow past 1.7e38) and the difference is not read twice. All-finite
    rounds are bit-identical to the round without the check for FedAvg, DP, secure, FedPer and
    IFCA; the quantized chain's result moves by at most one float32 ulp (XLA fuses its
    weighted sum differently once the mask depends on the trained weights).
    """
    finite = finite_updates(trained)
    deltas = jax.tree.map(
        lambda p, g: jnp.where(finite.reshape((-1,) + (1,) * (p.ndim - 1)), p - g,
                               jnp.zeros((), p.dtype)), trained, start)
    return deltas, participating & finite, jnp.sum(participating & ~finite)


def party_mesh(devices: int = 0, cohort: int | None = None) -> Mesh:
    """A 1-D mesh with axis ``parties`` over the first ``devices`` local devices (0 = all of
    them), never more devices than the ``cohort`` has parties (see :mod:`fedrl.sharding`).

    On CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` makes N host devices: each
    runs its shard on its own thread, which is how a round uses more than one core (XLA runs
    the small per-party matmuls of a ``vmap`` single-threaded).
    """
    return local_mesh("parties", devices, cohort, setting="fed.devices")


def make_federated_round(dqn: DQN, env: EnvFns, env_params: PyTree, cfg: FederatedConfig,
                         aggregator: AggregationTransform | None = None) -> FederatedRound:
    """Build the federated round for parties whose env params are stacked ``[K, E, ...]``.

    ``E`` is the number of environments each party runs (1 for a hospital; K hospitals for the
    centralized reference, which is a single party pooling all hospitals' experience).

    With several devices (``cfg.devices``) the cohort's local training is split over them and,
    when K is a multiple of the device count, the parties' state (replay buffers included) stays
    split between rounds; the global model is replicated. Results agree with the one-device
    round up to float rounding (different summation order), not bit for bit: ``num_devices``
    says how many were used, and the experiments record it. A state committed to one device
    (``jax.device_put(x, device)``) must be moved to the mesh (or left uncommitted, as ``init``
    and restored checkpoints are) before ``step``.
    """
    cfg.validate()
    leaves = jax.tree.leaves(env_params)
    require(len(leaves) > 0 and leaves[0].ndim >= 2,
            "env_params must be stacked with a leading party axis K and an env axis E")
    num_parties = int(leaves[0].shape[0])
    require(num_parties >= 1, "the federation needs at least one party")
    require(dqn.config.target_update_every > 0 or cfg.sync_target_each_round,
            "dqn.target_update_every=0 means 'round sync only' and needs "
            "fed.sync_target_each_round=True: otherwise the target network is never synced")
    require(cfg.clients_per_round <= num_parties,
            f"fed.clients_per_round={cfg.clients_per_round} exceeds the {num_parties} parties")
    cohort = (cfg.clients_per_round or num_parties) if cfg.sampling == "fixed" else num_parties
    caps = local_step_caps(cfg, num_parties)     # static: deterministic given the config
    require(caps.max() > 0,
            f"fed.round_deadline={cfg.round_deadline} with fed.party_speeds={cfg.party_speeds}: "
            f"every party is a straggler (no party finishes one of the {cfg.local_steps} local "
            "steps before the deadline), so nothing would ever train or be aggregated")
    asynchronous = cfg.aggregation != "none" and cfg.max_staleness > 0
    require(not asynchronous or cfg.party_speeds is not None,
            f"fed.max_staleness={cfg.max_staleness} needs fed.party_speeds (each party's "
            "staleness comes from its speed); without them every update is fresh")
    staleness = party_staleness(cfg, num_parties)
    mesh = party_mesh(cfg.devices, cohort)
    num_devices = mesh.devices.size
    # The cohort is padded to a multiple of the device count with copies of its first party,
    # which train like the others and are then discarded.
    padded = padded_size(cohort, mesh)
    aggregator = aggregator or fedavg()
    server_opt = make_server_optimizer(cfg)
    federated = cfg.aggregation != "none"
    require(not federated or cfg.sampling != "fixed" or cohort >= aggregator.min_participants,
            f"a fixed cohort of {cohort} parties (fed.clients_per_round) is below the "
            f"aggregator's minimum of {aggregator.min_participants} participants (e.g. "
            "aggregator.secure_min_participants): every round would abort")
    num_clusters = cfg.num_clusters if federated else 1
    clustered = num_clusters > 1            # IFCA: C server models (clustering.py)
    mask = None                             # FedPer: static leaf mask of the personal head
    if cfg.personal_layers:
        obs_shape, _ = jax.eval_shape(env.reset, jax.random.key(0),
                                      _take(_take(env_params, 0), 0))
        abstract = jax.eval_shape(lambda k: dqn.init_params(k, obs_shape.shape[-1]),
                                  jax.random.key(0))
        mask = personalization.personal_mask(abstract, cfg.personal_layers)

    # Federated dropout: the parties train a smaller network (submodel.py).
    dropout_units = federated and cfg.submodel_rate > 0
    widths = tuple(int(h) for h in dqn.config.hidden_sizes)
    kept = (submodel.dropping_units(widths, cfg.submodel_rate, "fed.submodel_rate")
            if dropout_units else widths)
    local_dqn = submodel.submodel_dqn(dqn, kept, cfg.submodel_rescale) if dropout_units else dqn
    # Under per_round every party covers the same coordinates: the coverage mean is the plain
    # mean (zero on the dropped coordinates), so the coverage is not needed.
    per_coordinate = (dropout_units and cfg.submodel_aggregation == "coverage"
                      and cfg.submodel_draw == "per_party")
    require(not per_coordinate or aggregator.honours_coverage,
            "fed.submodel_aggregation='coverage' needs an aggregator whose mean reads each "
            "party's sub-model coverage (fedavg, quantized, fednova); DP and secure "
            "aggregation sum zero-filled updates: set fed.submodel_aggregation='zero_fill' (or "
            "fed.submodel_draw='per_round', one sub-model for the whole cohort)")

    def local_training(states: DQNState, params_env: PyTree, keys: jax.Array,
                       budgets: jax.Array):
        return local_dqn.train_parties(env, states, params_env, keys, cfg.local_steps, budgets,
                                       gating=cfg.update_gating, chunk=cfg.party_chunk)

    local_training = split_leading(local_training, mesh)

    def keep_split(parties: DQNState) -> DQNState:
        """Parties' state sharded on the mesh between rounds (not replicated on every device)."""
        if num_devices == 1 or num_parties % num_devices:
            return parties
        return jax.lax.with_sharding_constraint(
            parties, NamedSharding(mesh, PartitionSpec("parties")))

    def init(key: jax.Array) -> FederatedState:
        k_global, k_parties = jax.random.split(key)
        # Only the observation's shape is needed: evaluated abstractly, so no key is drawn for
        # the reset (k_global used to feed both the reset and the initialisation).
        obs_example, _ = jax.eval_shape(env.reset, k_global, _take(_take(env_params, 0), 0))
        party_keys = jax.vmap(lambda i: jax.random.fold_in(k_parties, i))(
            jnp.arange(num_parties))
        if clustered:
            # IFCA initialises the C models independently at random (Ghosh et al. 2020, Alg. 1):
            # model c from fold_in(k_global, c). Parties start in a random balanced assignment.
            cluster_keys = jax.vmap(lambda c: jax.random.fold_in(k_global, c))(
                jnp.arange(num_clusters))
            models = jax.vmap(lambda k: dqn.init_params(k, obs_example.shape[-1]))(cluster_keys)
            clusters = clustering.initial_assignment(
                jax.random.fold_in(k_global, clustering.CLUSTER_KEY_SALT), num_parties,
                num_clusters)
            parties = jax.vmap(lambda k, p, w: dqn.init_state(k, env, p, w))(
                party_keys, env_params, _take(models, clusters))
            return ClusteredFederatedState(
                global_params=models, server_opt_state=jax.vmap(server_opt.init)(models),
                aggregator_state=jax.vmap(aggregator.init)(models),
                parties=keep_split(parties), round=jnp.zeros((), jnp.int32), clusters=clusters)
        global_params = dqn.init_params(k_global, obs_example.shape[-1])
        if federated:
            parties = jax.vmap(lambda k, p: dqn.init_state(k, env, p, global_params))(
                party_keys, env_params)
        else:  # local-only: every party starts from its own random initialisation
            parties = jax.vmap(lambda k, p: dqn.init_state(k, env, p))(party_keys, env_params)
        # FedPer: the aggregation chain only ever sees the shared leaves.
        agg_params = (global_params if mask is None
                      else personalization.shared_leaves(global_params, mask))
        fields = dict(global_params=global_params,
                      server_opt_state=server_opt.init(global_params),
                      aggregator_state=aggregator.init(agg_params),
                      parties=keep_split(parties), round=jnp.zeros((), jnp.int32))
        if asynchronous:   # before round 0 every "older" model is the initial one
            return AsyncFederatedState(
                **fields, history=_broadcast(global_params, cfg.max_staleness))
        return FederatedState(**fields)

    def step(state: FederatedState, key: jax.Array) -> tuple[FederatedState, dict]:
        rkey = jax.random.fold_in(key, state.round)
        k_sample, k_budget, k_drop, k_train, k_agg = jax.random.split(rkey, 5)

        # 1. Client sampling: indices of the cohort and which of them take part.
        if cfg.sampling == "fixed":
            idx = jax.random.permutation(k_sample, num_parties)[:cohort]
            sampled = jnp.ones((cohort,), bool)
        else:
            idx = jnp.arange(num_parties)
            sampled = jax.random.uniform(k_sample, (num_parties,)) < cfg.sampling_rate
        budget_frac = jax.random.uniform(k_budget, (num_parties,), minval=cfg.min_local_fraction,
                                         maxval=1.0)[idx]
        budget = jnp.ceil(budget_frac * cfg.local_steps).astype(jnp.int32)
        straggler = jnp.zeros((cohort,), bool)
        if cfg.round_deadline is not None:
            # Adaptive local steps: no party runs past the deadline; one that cannot finish a
            # single step misses the round (trains nothing, masked out like a dropout).
            cap = jnp.asarray(caps)[idx]
            budget = jnp.minimum(budget, cap)
            straggler = cap == 0

        # 2. Broadcast the global weights to the selected parties.
        selected = _take(state.parties, idx)
        before = selected          # what a party that Poisson sampling leaves out keeps
        metrics_extra = {}
        if federated:
            if clustered:
                # IFCA: each sampled party whose buffer holds a batch picks the cluster model
                # of least TD loss on it; the others keep their last cluster.
                k_cluster = jax.random.fold_in(rkey, clustering.CLUSTER_KEY_SALT)
                losses = clustering.cluster_losses(
                    dqn, state.global_params, selected.buffer, selected.target_params,
                    jax.vmap(lambda i: jax.random.fold_in(k_cluster, i))(idx),
                    use_cluster_target=cfg.sync_target_each_round)
                estimated = sampled & (selected.buffer.size >= dqn.config.batch_size)
                assigned = clustering.choose_clusters(losses, state.clusters[idx], estimated)
                start = _take(state.global_params, assigned)
                metrics_extra["cluster_losses"] = jnp.full(
                    (num_parties, num_clusters), jnp.nan).at[idx].set(
                    jnp.where(estimated[:, None], losses, jnp.nan))
            else:
                start = _broadcast(state.global_params, cohort)
            if asynchronous:
                # Party k starts from the global model of s_k rounds ago.
                models = jax.tree.map(lambda g, h: jnp.concatenate([g[None], h]),
                                      state.global_params, state.history)
                start = _take(models, jnp.asarray(staleness)[idx])
            if mask is not None:   # FedPer: the broadcast replaces the body, not the head
                # A party whose personal head went non-finite (its Q-values diverged) takes
                # the server's copy of the head (the initial head) instead: with a NaN head
                # every later update would be NaN and the party excluded for good. A finite
                # head is kept bit for bit [reconstructed: FedPer does not say].
                head_ok = finite_updates(personalization.personal_leaves(selected.params, mask))
                start = jax.tree.map(lambda m, p, g: tree_select(head_ok, p, g) if m else g,
                                     mask, selected.params, start)
            selected = selected.replace(params=start)
            if cfg.sync_target_each_round:
                selected = selected.replace(target_params=start)
            if cfg.reset_optimizer_each_round:
                selected = selected.replace(opt_state=jax.vmap(dqn.optimizer.init)(
                    selected.params))
            else:
                # A party left out last round for a non-finite update (its Q-values diverged)
                # restarts its optimizer: the broadcast replaced its weights, but NaN moments
                # would make every later update NaN and exclude it for good. A finite state is
                # kept bit for bit.
                selected = selected.replace(opt_state=tree_select(
                    ~finite_updates(selected.opt_state),
                    jax.vmap(dqn.optimizer.init)(selected.params), selected.opt_state))
            if not cfg.sync_target_each_round:   # likewise a diverged target network
                selected = selected.replace(target_params=tree_select(
                    ~finite_updates(selected.target_params), start, selected.target_params))
        elif cfg.sync_target_each_round and dqn.config.target_update_every == 0:
            # No broadcast (local-only, centralized): "round sync only" syncs the target to the
            # party's own online weights at the start of each round; without this the target
            # would stay at its random initialisation. (With target_update_every > 0 the
            # agent's own schedule syncs it and a round boundary means nothing to it.)
            selected = selected.replace(target_params=selected.params)

        if dropout_units:
            # Federated dropout: the parties get their sub-models (one drawn for the round, or
            # one per party); weights, target and Adam moments are cut out of the full ones.
            k_units = jax.random.fold_in(rkey, submodel.SUBMODEL_KEY_SALT)
            if cfg.submodel_draw == "per_party":
                units = jax.vmap(lambda i: submodel.sample_units(
                    jax.random.fold_in(k_units, i), widths, kept))(idx)
            else:
                units = _broadcast(submodel.sample_units(k_units, widths, kept), cohort)
            full = selected
            selected = jax.vmap(submodel.cut_state)(full, units)

        # 3. Local training of the whole cohort at once. Parties that Poisson sampling left out
        # train too and are discarded below: the cohort then shares one update schedule, which is
        # much cheaper than masking them step by step (see DQN.train_parties).
        party_keys = jax.vmap(lambda i: jax.random.fold_in(k_train, i))(idx)
        inputs = (selected, _take(env_params, idx), party_keys, budget)
        # (padding copies the buffers: static, only when there is padding)
        trained, summary = unpad_leading(local_training(*pad_leading(inputs, padded)), cohort)
        coverage = None
        if dropout_units:
            # Back into the full model's coordinates: outside its sub-model a party's weights
            # stay the broadcast ones, so its update there is exactly zero.
            trained = jax.vmap(submodel.paste_state)(trained, full, units)
            if per_coordinate:
                coverage = jax.vmap(submodel.coverage)(full.params, units)
        # Unsampled parties sit the round out: they keep their own weights, target, optimizer,
        # environment and buffer from before the broadcast (as a party outside a fixed cohort)
        trained = tree_select(sampled, trained, before)
        summary = jax.tree.map(lambda x: jnp.where(sampled, x, 0), summary)

        # 4-5. Updates relative to the broadcast weights, dropouts, aggregation, server step.
        survived = jax.random.uniform(k_drop, (cohort,)) >= cfg.dropout_rate
        participating = sampled & survived & ~straggler
        global_params, server_opt_state, agg_state = (
            state.global_params, state.server_opt_state, state.aggregator_state)
        nonfinite = jnp.zeros((), jnp.int32)       # local-only: nothing is sent
        if federated and clustered:
            deltas, participating, nonfinite = _client_updates(trained.params, start,
                                                               participating)
            weights = summary["transitions"].astype(jnp.float32)

            def cluster_server(params, opt_state, agg_state_c, c):
                """FedAvg within cluster c; a cluster without participants keeps its model and
                its server state (no step: momentum / Adam do not move it either)."""
                members = participating & (assigned == c)
                delta, new_agg = aggregator.update(
                    Cohort(updates=deltas, weights=weights, mask=members,
                           local_updates=summary["updates"]), agg_state_c,
                    jax.random.fold_in(k_agg, c))
                new_params, new_opt = server_update(params, delta, opt_state, server_opt)
                return tree_select(jnp.any(members), (new_params, new_opt, new_agg),
                                   (params, opt_state, agg_state_c))

            global_params, server_opt_state, agg_state = jax.vmap(cluster_server)(
                global_params, server_opt_state, agg_state, jnp.arange(num_clusters))
            metrics_extra["cluster_sizes"] = jnp.sum(
                jax.nn.one_hot(assigned, num_clusters, dtype=jnp.int32)
                * participating[:, None], axis=0)
        elif federated and mask is not None:
            # FedPer: only the shared leaves are sent and averaged; the server's copy of the
            # personal leaves stays at its initialisation (it is never broadcast).
            deltas, participating, nonfinite = _client_updates(
                personalization.shared_leaves(trained.params, mask),
                personalization.shared_leaves(state.global_params, mask), participating)
            weights = summary["transitions"].astype(jnp.float32)
            shared_delta, agg_state = aggregator.update(
                Cohort(updates=deltas, weights=weights, mask=participating,
                       local_updates=summary["updates"]), agg_state, k_agg)
            delta = personalization.with_shared(
                jax.tree.map(jnp.zeros_like, global_params), mask, shared_delta)
            updated, server_opt_state = server_update(
                global_params, delta, server_opt_state, server_opt)
            global_params = personalization.merge(mask, global_params, updated)
        elif federated:
            deltas, participating, nonfinite = _client_updates(
                trained.params, start if asynchronous else state.global_params, participating)
            if asynchronous:
                # FedAsync: a stale update is shrunk by (1 + s_k)^-a before the aggregation.
                shrink = staleness_weight(jnp.asarray(staleness)[idx], cfg.staleness_exponent)
                deltas = jax.tree.map(
                    lambda d: d * shrink.reshape((-1,) + (1,) * (d.ndim - 1)).astype(d.dtype),
                    deltas)
            weights = summary["transitions"].astype(jnp.float32)
            delta, agg_state = aggregator.update(
                Cohort(updates=deltas, weights=weights, mask=participating,
                       local_updates=summary["updates"], coverage=coverage), agg_state, k_agg)
            global_params, server_opt_state = server_update(
                global_params, delta, server_opt_state, server_opt)
        if federated and not clustered and not aggregator.releases_every_round:
            # A round without participants (all stragglers, dropped or excluded) keeps the
            # server as it was: FedAvgM's momentum / FedAdam's moments would otherwise move the
            # model on a zero update. Not under DP: its noise is released in every round
            # (skipping would reveal an empty Poisson sample). (IFCA guards each cluster.)
            # Likewise a round below the aggregator's minimum (a secure sum that aborted).
            enough = jnp.sum(participating) >= max(1, aggregator.min_participants)
            global_params, server_opt_state, agg_state = tree_select(
                enough, (global_params, server_opt_state, agg_state),
                (state.global_params, state.server_opt_state, state.aggregator_state))

        parties = jax.tree.map(lambda whole, part: whole.at[idx].set(part),
                               state.parties, trained)
        metrics = {
            "participants": jnp.sum(participating),
            "reward_per_step": jnp.sum(summary["reward_per_step"] * sampled)
                               / jnp.maximum(jnp.sum(sampled), 1),
            "loss": jnp.sum(summary["loss"] * sampled) / jnp.maximum(jnp.sum(sampled), 1),
            "updates": jnp.sum(summary["updates"]),
            "transitions": jnp.sum(summary["transitions"]),
            # parties whose update had a NaN / inf and was not sent (excluded from participants)
            "nonfinite_updates": nonfinite,
            # sampled parties too slow for one step before fed.round_deadline
            "stragglers": jnp.sum(sampled & straggler),
            # local env steps each party ran this round (0: not sampled or a straggler)
            "party_steps": jnp.zeros((num_parties,), jnp.int32).at[idx].set(
                jnp.where(sampled, budget, 0)),
        }
        new_state = state.replace(global_params=global_params,
                                  server_opt_state=server_opt_state,
                                  aggregator_state=agg_state, parties=keep_split(parties),
                                  round=state.round + 1)
        if asynchronous:
            new_state = new_state.replace(history=jax.tree.map(
                lambda g, h: jnp.concatenate([g[None], h[:-1]]), state.global_params,
                state.history))
            metrics["staleness"] = jnp.zeros((num_parties,), jnp.int32).at[idx].set(
                jnp.where(sampled, jnp.asarray(staleness)[idx], 0))
        if clustered:
            # the server learns the cluster of the parties that sent an update only
            clusters = state.clusters.at[idx].set(
                jnp.where(participating, assigned, state.clusters[idx]))
            new_state = new_state.replace(clusters=clusters)
            metrics.update(metrics_extra, clusters=clusters)
        return new_state, metrics

    return FederatedRound(init=jax.jit(init), step=jax.jit(step, donate_argnums=0),
                          num_parties=num_parties, cohort_size=cohort, num_devices=num_devices)
