"""DP accounting: privacy.md's reference values, inverse, input validation, the CLI script."""
import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest

from fedrl.config import ConfigError
from fedrl.privacy import accounting

logging.getLogger("absl").setLevel(logging.ERROR)
ROOT = Path(__file__).resolve().parents[2]

# privacy.md's table (delta = 1e-5): (z, q, T, RDP eps, PLD eps).
REFERENCE = [(1.0, 0.01, 1000, 2.1014, 1.8282),
             (1.1, 0.1, 100, 6.6208, 5.9127),
             (1.0, 1.0, 1, 4.7285, 4.3772)]


@pytest.mark.parametrize("z,q,t,eps_rdp,eps_pld", REFERENCE)
def test_epsilon_matches_reference_table(z, q, t, eps_rdp, eps_pld):
    assert accounting.epsilon(z, q, t, 1e-5, "rdp") == pytest.approx(eps_rdp, abs=1e-3)
    assert accounting.epsilon(z, q, t, 1e-5, "pld") == pytest.approx(eps_pld, abs=1e-3)


def test_pld_is_tighter_and_more_noise_means_less_epsilon():
    assert accounting.epsilon(1.0, 0.01, 1000, 1e-5, "pld") < accounting.epsilon(
        1.0, 0.01, 1000, 1e-5, "rdp")
    assert accounting.epsilon(2.0, 0.01, 100, 1e-5, "rdp") < accounting.epsilon(
        1.0, 0.01, 100, 1e-5, "rdp")


def test_inverse_rdp_matches_reference_and_round_trips():
    z = accounting.noise_multiplier_for_epsilon(1.0, 0.01, 1000, 1e-5, "rdp")
    assert z == pytest.approx(1.513, abs=1e-3)
    assert accounting.epsilon(z, 0.01, 1000, 1e-5, "rdp") == pytest.approx(1.0, abs=1e-3)


def test_inverse_pld_round_trips():
    # Coarser PLD grid keeps the test fast; the round trip must hold at that grid.
    z = accounting.noise_multiplier_for_epsilon(2.0, 0.1, 20, 1e-5, "pld",
                                                pld_discretization=1e-3)
    assert accounting.epsilon(z, 0.1, 20, 1e-5, "pld", pld_discretization=1e-3) == \
        pytest.approx(2.0, abs=2e-3)
    z_rdp = accounting.noise_multiplier_for_epsilon(2.0, 0.1, 20, 1e-5, "rdp")
    assert z < z_rdp  # PLD is tighter, so it needs less noise for the same epsilon


@pytest.mark.parametrize("kwargs,needle", [
    (dict(delta=0.0), "delta"), (dict(delta=1.0), "delta"), (dict(delta=-1e-5), "delta"),
    (dict(sampling_rate=0.0), "sampling_rate"), (dict(sampling_rate=1.5), "sampling_rate"),
    (dict(noise_multiplier=0.0), "noise_multiplier"),
    (dict(noise_multiplier=-1.0), "noise_multiplier"),
    (dict(rounds=0), "rounds"), (dict(rounds=2.5), "rounds"),
    (dict(accountant="moments"), "accountant"),
])
def test_impossible_inputs_raise_config_error(kwargs, needle):
    args = dict(noise_multiplier=1.0, sampling_rate=0.1, rounds=10, delta=1e-5,
                accountant="rdp") | kwargs
    with pytest.raises(ConfigError, match=needle):
        accounting.epsilon(**args)


@pytest.mark.parametrize("eps", [0.0, -1.0, math.inf])
def test_inverse_rejects_non_positive_epsilon(eps):
    with pytest.raises(ConfigError, match="target_epsilon"):
        accounting.noise_multiplier_for_epsilon(eps, 0.1, 10, 1e-5, "rdp")


def test_dp_config_record():
    cfg = accounting.DPConfig(clip_norm=0.5, noise_multiplier=1.1, sampling_rate=0.1,
                              rounds=100, delta=1e-5, accountant="pld")
    rec = cfg.record()
    assert rec["epsilon"] == pytest.approx(5.9127, abs=1e-3)
    assert rec["epsilon_rdp"] == pytest.approx(6.6208, abs=1e-3)
    for key, value in dict(delta=1e-5, accountant="pld", sampling_rate=0.1,
                           noise_multiplier=1.1, rounds=100, clip_norm=0.5).items():
        assert rec[key] == value
    assert rec["sampling"] == "poisson"
    json.dumps(rec)
    assert cfg.mean_noise_stddev(num_clients=50) == pytest.approx(1.1 * 0.5 / 5.0)
    with pytest.raises(ConfigError, match="delta"):
        accounting.DPConfig(delta=2.0).validate()


def _script(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "privacy_budget.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_script_prints_epsilon_and_noise_multiplier():
    out = _script("--noise-multiplier", "1.0", "--sampling-rate", "1.0", "--rounds", "1",
                  "--delta", "1e-5", "--accountant", "rdp")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["epsilon"] == pytest.approx(4.7285, abs=1e-3)
    assert result["rounds"] == 1 and result["accountant"] == "rdp"
    out = _script("--target-epsilon", "1.0", "--sampling-rate", "0.01", "--rounds", "1000",
                  "--delta", "1e-5", "--accountant", "rdp")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["noise_multiplier"] == pytest.approx(1.513, abs=1e-3)


@pytest.mark.parametrize("bad", [["--delta", "1.5"], ["--delta", "0"]])
def test_script_exit_code_2_on_impossible_input(bad):
    out = _script("--noise-multiplier", "1.0", "--sampling-rate", "0.1", "--rounds", "10", *bad)
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "delta" in lines[0]


def test_unreachable_pld_target_is_a_config_error():
    # PLD's discretized epsilon at the RDP answer sits above this tiny target: Brent's method
    # got no bracket and raised a bare ValueError before
    with pytest.raises(ConfigError, match="no noise multiplier reaches epsilon=1e-06"):
        accounting.noise_multiplier_for_epsilon(1e-6, 1.0, 1000, 1e-5)


def test_epsilon_is_memoized_on_plain_numbers():
    # the same (z, q, T, delta) asked twice (e.g. DP with and without secure aggregation) is
    # composed once; NumPy and Python numbers are the same entry; other arguments are not
    import numpy as np
    args = (1.3, 0.07, 37, 1e-5)
    first = accounting.epsilon(*args)
    hits = accounting._epsilon.cache_info().hits
    again = accounting.epsilon(np.float64(1.3), np.float64(0.07), np.int64(37), 1e-5)
    assert again == first and accounting._epsilon.cache_info().hits == hits + 1
    assert accounting.epsilon(1.3, 0.07, 38, 1e-5) > first
    assert accounting.epsilon(*args, accountant="rdp") > first
