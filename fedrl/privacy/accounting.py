"""Privacy accounting for client-level DP-FedAvg with the ``dp_accounting`` package.

Each round of DP-FedAvg (McMahan, Ramage, Talwar, Zhang, ICLR 2018) is a Poisson-subsampled
Gaussian mechanism: clients take part independently with probability q, the sum of their
C-clipped updates gets N(0, (z C)^2) noise. T rounds compose to

    SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(z)), T)

accounted either with Renyi DP (Mironov, CSF 2017; Mironov, Talwar, Zhang 2019 for the
subsampled Gaussian) or with privacy loss distributions (Koskela et al. AISTATS 2020;
Doroshenko et al. PETS 2022). PLD is tighter and is the figure we report; RDP is kept as a
cross-check. Neighbouring datasets differ by adding or removing one client (client-level DP).

Pitfall (privacy.md): for fixed-size cohorts (m of N without replacement) dp-accounting
under-reports epsilon (its issue #378). Sample clients with Poisson sampling, as assumed here,
or account fixed-size cohorts with sensitivity 2C.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import numbers
from typing import Literal

import dp_accounting
from dp_accounting import pld, rdp

from fedrl.config import ConfigError, require, require_in_range, require_positive

Accountant = Literal["pld", "rdp"]
ACCOUNTANTS = ("pld", "rdp")
# PLD grid step for the privacy loss: 1e-4 reproduces privacy.md's reference values to 1e-4.
PLD_DISCRETIZATION = 1e-4


def _check_common(sampling_rate, rounds, delta, accountant) -> None:
    require(accountant in ACCOUNTANTS,
            f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")
    require_in_range("sampling_rate q", sampling_rate, 0.0, 1.0, low_open=True)
    require(isinstance(rounds, numbers.Integral) and not isinstance(rounds, bool)
            and rounds >= 1,
            f"rounds T must be an integer >= 1, got {rounds!r}")
    require_in_range("delta", delta, 0.0, 1.0, low_open=True, high_open=True)


def dp_event(noise_multiplier: float, sampling_rate: float, rounds: int) -> dp_accounting.DpEvent:
    """T-fold composition of the Poisson-subsampled Gaussian mechanism.

    Arguments are converted to Python float / int: dp-accounting refuses e.g. ``np.int64``
    counts and 0-d JAX arrays."""
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(
            float(sampling_rate), dp_accounting.GaussianDpEvent(float(noise_multiplier))),
        int(rounds))


def make_accountant(accountant: Accountant = "pld",
                    pld_discretization: float = PLD_DISCRETIZATION):
    """A fresh dp-accounting accountant (add-or-remove-one-client neighbouring relation)."""
    if accountant == "pld":
        return pld.PLDAccountant(value_discretization_interval=pld_discretization)
    return rdp.RdpAccountant()


def epsilon(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float,
            accountant: Accountant = "pld",
            pld_discretization: float = PLD_DISCRETIZATION) -> float:
    """epsilon of T rounds of DP-FedAvg with noise multiplier z and Poisson rate q at delta."""
    _check_common(sampling_rate, rounds, delta, accountant)
    require_positive("noise_multiplier z", noise_multiplier)
    # Plain Python numbers for dp-accounting (NumPy / 0-d JAX scalars pass validation).
    return _epsilon(float(noise_multiplier), float(sampling_rate), int(rounds), float(delta),
                    accountant, float(pld_discretization))


@functools.lru_cache(maxsize=256)
def _epsilon(noise_multiplier: float, sampling_rate: float, rounds: int, delta: float,
             accountant: Accountant, pld_discretization: float) -> float:
    """:func:`epsilon` on plain Python numbers, memoized: a PLD of a small z takes tens of
    seconds (pure-Python grid), and an experiment asks for the same (z, q, T, delta) once per
    aggregator that shares it (e.g. DP with and without secure aggregation)."""
    acc = make_accountant(accountant, pld_discretization)
    try:
        with _quiet_absl():
            acc.compose(dp_event(noise_multiplier, sampling_rate, rounds))
            return float(acc.get_epsilon(delta))
    except MemoryError:
        # PLD's loss grid grows like 1/z^2: a tiny z can ask for tens of GiB
        raise ConfigError(
            f"PLD accounting of z={noise_multiplier}, q={sampling_rate}, T={rounds} needs more "
            "memory than this machine has (its privacy-loss grid grows as z shrinks); use "
            "accountant='rdp' or a larger noise multiplier") from None


@contextlib.contextmanager
def _quiet_absl():
    """Silence dp-accounting's per-order RDP warnings for large q (orders whose series does not
    converge are excluded from the minimum, which only makes the bound conservative)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def noise_multiplier_for_epsilon(target_epsilon: float, sampling_rate: float, rounds: int,
                                 delta: float, accountant: Accountant = "pld",
                                 pld_discretization: float = PLD_DISCRETIZATION,
                                 tol: float = 1e-4) -> float:
    """Smallest z (within ``tol``) whose epsilon is <= target: dp_accounting's
    ``calibrate_dp_mechanism`` (Brent's method over z)."""
    _check_common(sampling_rate, rounds, delta, accountant)
    require_positive("target_epsilon", target_epsilon)
    target_epsilon, sampling_rate, delta = float(target_epsilon), float(sampling_rate), float(delta)
    rounds = int(rounds)

    def calibrate(acc, bracket):
        try:
            return dp_accounting.calibrate_dp_mechanism(
                lambda: make_accountant(acc, pld_discretization),
                lambda z: dp_event(z, sampling_rate, rounds),
                target_epsilon, delta, bracket_interval=bracket, tol=tol)
        except (dp_accounting.mechanism_calibration.NoBracketIntervalFoundError,
                ValueError):
            # ValueError: Brent's bracket does not straddle the target (PLD's discretized
            # epsilon at the RDP answer can sit just above a tiny target)
            raise ConfigError(
                f"no noise multiplier reaches epsilon={target_epsilon} at delta={delta} with "
                f"q={sampling_rate}, T={rounds}") from None

    # RDP is cheap: search from z = 1e-2 (smaller z is never useful and is numerically
    # fragile). RDP over-estimates epsilon, so z_rdp is an upper end for PLD's z; PLD is slow
    # for small z (wide loss grids), so its bracket starts there and halves down.
    z_rdp = calibrate("rdp", dp_accounting.LowerEndpointAndGuess(1e-2, 1.0))
    if accountant == "rdp":
        return float(z_rdp)
    low = z_rdp / 2
    while low > 1e-2 and epsilon(low, sampling_rate, rounds, delta, "pld",
                                 pld_discretization) <= target_epsilon:
        low /= 2
    z = calibrate("pld", dp_accounting.ExplicitBracketInterval(max(low, 1e-2), z_rdp))
    return float(z)


@dataclasses.dataclass(frozen=True)
class DPConfig:
    """The knobs of client-level DP-FedAvg and what a DP run records in results.json."""
    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    sampling_rate: float = 0.1          # Poisson rate q (expected cohort = q N)
    rounds: int = 100
    delta: float = 1e-5
    accountant: str = "pld"

    def validate(self) -> None:
        require_positive("dp.clip_norm", self.clip_norm)
        require_positive("dp.noise_multiplier", self.noise_multiplier)
        _check_common(self.sampling_rate, self.rounds, self.delta, self.accountant)

    def expected_clients(self, num_clients: int) -> float:
        """The fixed denominator q N of DP-FedAvg."""
        return self.sampling_rate * num_clients

    def mean_noise_stddev(self, num_clients: int) -> float:
        """Noise std on the aggregated mean: z C / (q N)."""
        return self.noise_multiplier * self.clip_norm / self.expected_clients(num_clients)

    def record(self, rounds_run: int | None = None) -> dict:
        """The dict a DP run stores under ``"privacy"`` in results.json.

        ``rounds_run`` (default ``rounds``) lets a run stopped early report what it spent; more
        than ``rounds`` is a ConfigError.
        """
        self.validate()
        t = self.rounds if rounds_run is None else rounds_run
        require(isinstance(t, numbers.Integral) and not isinstance(t, bool) and t >= 0,
                f"DPConfig.record: rounds_run must be an integer >= 0 (rounds actually run), "
                f"got {rounds_run!r}")
        t = int(t)
        # More rounds than planned spend more than the configured budget: the plan (and every
        # epsilon derived from it) was wrong, which a record must not hide.
        require(t <= self.rounds,
                f"DPConfig.record: rounds_run={t} exceeds the configured dp.rounds="
                f"{self.rounds}; raise dp.rounds to the rounds actually run")
        eps = (epsilon(self.noise_multiplier, self.sampling_rate, t, self.delta,
                       self.accountant) if t >= 1 else 0.0)
        other = "rdp" if self.accountant == "pld" else "pld"
        eps_other = (epsilon(self.noise_multiplier, self.sampling_rate, t, self.delta, other)
                     if t >= 1 else 0.0)
        return {
            "epsilon": eps, "delta": self.delta, "accountant": self.accountant,
            f"epsilon_{other}": eps_other,
            "noise_multiplier": self.noise_multiplier, "sampling_rate": self.sampling_rate,
            "rounds": t, "clip_norm": self.clip_norm,
            "sampling": "poisson", "unit": "client (add/remove one client)",
            "mechanism": "subsampled Gaussian, DP-FedAvg (McMahan et al. 2018)",
            "dp_accounting_version": _version(),
        }


def _version() -> str:
    from importlib import metadata
    try:
        return metadata.version("dp-accounting")
    except metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"
