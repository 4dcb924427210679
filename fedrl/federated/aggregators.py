"""Choose a federated round's aggregation by config: FedAvg, quantized FedAvg, DP-FedAvg,
secure, DP + secure.

One frozen dataclass (:class:`AggregatorConfig`) names the aggregation and its parameters;
:func:`build_aggregator` turns it into the chain of :mod:`fedrl.federated.aggregation` and, for
DP runs, the privacy record (epsilon, delta, accountant and its parameters) that every DP
result stores.

* ``fedavg``: weighted mean (McMahan et al., AISTATS 2017);
* ``quantized``: the same mean of updates compressed to ``quantize_bits`` bits per coordinate
  plus one float32 scale per client (unbiased stochastic rounding, Suresh et al., ICML 2017;
  :func:`~fedrl.federated.aggregation.scaled_stochastic_quantize`);
* ``secure``: the same mean through mask-based secure aggregation (Bonawitz et al., CCS 2017);
* ``dp``: DP-FedAvg (McMahan, Ramage, Talwar, Zhang, ICLR 2018): clip to C, sum, Gaussian noise
  of std z*C on the sum, divide by the expected cohort q*N; needs Poisson client sampling;
* ``dp_secure``: DP-FedAvg whose sum goes through secure aggregation, the server adding the
  central noise to the unmasked sum;
* ``fednova``: FedNova's normalized averaging (Wang et al., NeurIPS 2020), for parties that ran
  different numbers of local updates (``fed.round_deadline`` with ``fed.party_speeds``,
  ``fed.min_local_fraction``); each party also sends its update count tau_k.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

from fedrl.config import require, require_in_range, require_positive
from fedrl.federated import aggregation
from fedrl.federated.aggregation import AggregationTransform
from fedrl.federated.round import FederatedConfig
from fedrl.privacy.accounting import DPConfig
from fedrl.privacy.quantization import FixedPoint

KINDS = ("fedavg", "quantized", "secure", "dp", "dp_secure", "fednova")
FLOAT32_BYTES = 4
CLUSTERED_KINDS = ("fedavg", "quantized", "fednova")   # aggregations that run per IFCA cluster
CLUSTER_ID_BYTES = 4                        # IFCA: a party also reports its cluster (int32)


@dataclasses.dataclass(frozen=True)
class AggregatorConfig:
    kind: Literal["fedavg", "quantized", "secure", "dp", "dp_secure", "fednova"] = "fedavg"
    quantize_bits: int = 8             # quantized: bits per update coordinate
    clip_norm: float = 1.0             # DP: L2 bound C of one party's update
    noise_multiplier: float = 1.0      # DP: z (noise std z*C on the sum)
    delta: float = 1e-5                # DP: target delta of the reported epsilon
    accountant: Literal["pld", "rdp"] = "pld"
    secure_value_bound: float = 4.0    # secure (no DP): fixed-point range of an update coordinate
    self_masks: bool = False           # secure: Bonawitz's double masking
    secure_min_participants: int = 2   # secure: abort (no update) below this many participants

    def validate(self) -> None:
        require(self.kind in KINDS, f"aggregator.kind must be one of {KINDS}, got {self.kind!r}")
        require_positive("aggregator.clip_norm", self.clip_norm)
        require_positive("aggregator.noise_multiplier", self.noise_multiplier)
        require_in_range("aggregator.delta", self.delta, 0.0, 1.0, low_open=True,
                         high_open=True)
        require(self.accountant in ("pld", "rdp"),
                f"aggregator.accountant must be 'pld' or 'rdp', got {self.accountant!r}")
        require_positive("aggregator.secure_value_bound", self.secure_value_bound)
        aggregation.require_quantize_bits(self.quantize_bits, "aggregator.quantize_bits")
        aggregation.require_min_participants(self.secure_min_participants,
                                             "aggregator.secure_min_participants")

    @property
    def is_dp(self) -> bool:
        return self.kind in ("dp", "dp_secure")


def build_aggregator(cfg: AggregatorConfig, num_parties: int, fed: FederatedConfig
                     ) -> tuple[AggregationTransform, dict | None]:
    """The aggregation chain for ``num_parties`` parties, and the DP record (None without DP).

    With IFCA clusters (``fed.num_clusters`` > 1) the chain runs once per cluster, on the
    cluster's members: supported for ``fedavg``, ``quantized`` and ``fednova`` (per-party
    steps and a weighted mean, which mean the same within a cluster); refused for ``secure`` (one masking
    session per cluster is not implemented) and DP (the accountant does not model the
    data-dependent cluster choice, and the fixed denominator q*N refers to the whole
    population).
    """
    cfg.validate()
    require(fed.num_clusters == 1 or cfg.kind in CLUSTERED_KINDS,
            f"aggregator.kind={cfg.kind} with fed.num_clusters={fed.num_clusters} is not "
            f"supported (clustered FL runs one aggregation per cluster; supported kinds: "
            f"{list(CLUSTERED_KINDS)})")
    if cfg.kind == "fedavg":
        return aggregation.fedavg(), None
    if cfg.kind == "quantized":
        return aggregation.quantized_fedavg(cfg.quantize_bits), None
    if cfg.kind == "fednova":
        return aggregation.fednova(), None
    if cfg.kind == "secure":
        # Room for every party's value in the signed 32-bit ring: K * B * scale < 2^31.
        fp = FixedPoint(scale=2.0 ** 30 / (cfg.secure_value_bound * num_parties), bits=32,
                        value_bound=cfg.secure_value_bound)
        fp.check_parties(num_parties)
        # Weights are local transition counts (at most local_steps): capped weights keep the
        # individual weights hidden and equal FedAvg's weighting below the cap.
        return aggregation.secure_fedavg(fp, weight_cap=float(fed.local_steps),
                                         use_self_masks=cfg.self_masks,
                                         min_participants=cfg.secure_min_participants), None
    require(fed.sampling == "poisson",
            "DP aggregation needs fed.sampling='poisson': the accountant models Poisson client "
            "sampling (fixed-size cohorts would under-report epsilon)")
    expected = fed.sampling_rate * num_parties
    record = DPConfig(clip_norm=cfg.clip_norm, noise_multiplier=cfg.noise_multiplier,
                      sampling_rate=fed.sampling_rate, rounds=fed.num_rounds, delta=cfg.delta,
                      accountant=cfg.accountant).record()
    if cfg.kind == "dp":
        return aggregation.dp_fedavg(cfg.clip_norm, cfg.noise_multiplier, expected), record
    return aggregation.dp_secure_fedavg(cfg.clip_norm, cfg.noise_multiplier, expected,
                                        use_self_masks=cfg.self_masks,
                                        min_participants=cfg.secure_min_participants), record


def uplink_bytes_per_party(cfg: AggregatorConfig, num_params: int, num_clusters: int = 1
                           ) -> int:
    """Bytes one participating party sends the server per round for a model of ``num_params``
    float32 parameters (payload only: secure aggregation's key agreement and any transport
    framing are not counted). Under FedPer pass the shared parameters only
    (:func:`fedrl.federated.personalization.num_shared_params`): the personal head is never
    sent. With IFCA clusters (``num_clusters`` > 1) the party also sends its cluster index,
    ``CLUSTER_ID_BYTES`` more (its download, C models to choose from, is not counted here).

    * ``fedavg``: the update in float32 (4 bytes/parameter) and its aggregation weight;
    * ``fednova``: the same plus its int32 number of local updates;
    * ``quantized``: ``quantize_bits`` bits/parameter (packed, rounded up to whole bytes), the
      float32 scale and the weight;
    * ``secure``: D + 1 ring elements of 32 bits (the weighted update and its weight tag);
    * ``dp``, ``dp_secure``: the clipped update, D float32 / 32-bit ring elements (unweighted
      sum, no weight sent).
    """
    cfg.validate()
    require(isinstance(num_clusters, int) and num_clusters >= 1,
            f"num_clusters must be an integer >= 1, got {num_clusters!r}")
    d = int(num_params)
    extra = CLUSTER_ID_BYTES if num_clusters > 1 else 0
    if cfg.kind == "fedavg":
        return FLOAT32_BYTES * (d + 1) + extra
    if cfg.kind == "fednova":      # also its number of local updates tau_k
        return FLOAT32_BYTES * (d + 2) + extra
    if cfg.kind == "quantized":
        return -(-d * cfg.quantize_bits // 8) + 2 * FLOAT32_BYTES + extra
    if cfg.kind == "secure":
        return FLOAT32_BYTES * (d + 1) + extra
    return FLOAT32_BYTES * d + extra
