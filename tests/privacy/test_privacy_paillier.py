"""Paillier baseline: homomorphic sum of the fixed-point vectors equals the plain sum."""
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from fedrl.privacy import paillier, quantization


def test_paillier_sum_equals_plain_sum_of_fixed_point_vectors():
    pytest.importorskip("phe")
    fp = quantization.FixedPoint(scale=2.0 ** 10, bits=32, value_bound=1.0)
    x = jax.random.uniform(jax.random.key(0), (3, 5), minval=-1.0, maxval=1.0)
    q = jax.vmap(lambda k, v: quantization.encode(k, v, fp))(jax.random.split(jax.random.key(1), 3), x)
    ints = np.asarray(quantization.to_signed(q, fp)).tolist()
    total = paillier.paillier_sum(ints, key_bits=512)   # tiny key: a correctness test only
    assert total == np.sum(ints, axis=0).tolist()
    assert total == np.asarray(quantization.to_signed(quantization.ring_sum(q, fp), fp)).tolist()


def test_missing_phe_gives_a_clear_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "phe", None)   # makes `import phe` raise ImportError
    assert not paillier.available()
    with pytest.raises(ImportError, match="pip install phe"):
        paillier.generate_keypair(512)


def test_core_library_does_not_import_phe():
    code = ("import sys, fedrl, fedrl.federated.aggregation, fedrl.privacy.secure_aggregation, "
            "fedrl.privacy.paillier; assert 'phe' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert out.returncode == 0, out.stderr
