"""Additive homomorphic-encryption baseline for secure summation: Paillier via ``phe``.

Paillier, "Public-Key Cryptosystems Based on Composite Degree Residuosity Classes",
EUROCRYPT 1999: E(a) * E(b) = E(a + b), so a server can add encrypted client vectors and a
key holder decrypts only the sum. We encrypt the same signed fixed-point integers the masked
secure sum uses (:mod:`fedrl.privacy.quantization`), one ciphertext per coordinate.

``phe`` (python-paillier) is pure Python and GPLv3: it is an optional dependency imported
lazily inside these functions, never by ``fedrl/__init__`` or the aggregation path, and used
only by the benchmark and its test. The single-key-holder setting (who holds the private key)
is the baseline's simplification; threshold Paillier would be needed in deployment.
"""
from __future__ import annotations

from typing import Sequence


def _phe():
    try:
        import phe
    except ImportError:
        raise ImportError(
            "the Paillier baseline needs the optional package 'phe' (python-paillier, GPLv3): "
            "pip install phe") from None
    return phe


def available() -> bool:
    """Whether ``phe`` can be imported."""
    try:
        _phe()
    except ImportError:
        return False
    return True


def generate_keypair(key_bits: int = 2048):
    """A Paillier (public, private) key pair with an n of ``key_bits`` bits."""
    return _phe().generate_paillier_keypair(n_length=key_bits)


def encrypt_vector(public_key, values: Sequence[int]) -> list:
    """One ciphertext per (signed integer) coordinate."""
    return [public_key.encrypt(int(v)) for v in values]


def add_encrypted(a: list, b: list) -> list:
    """Coordinate-wise homomorphic addition."""
    return [x + y for x, y in zip(a, b)]


def decrypt_vector(private_key, ciphertexts: list) -> list[int]:
    return [int(private_key.decrypt(c)) for c in ciphertexts]


def paillier_sum(vectors: Sequence[Sequence[int]], keypair=None, key_bits: int = 2048) -> list[int]:
    """Encrypt each party's integer vector, add homomorphically, decrypt the sum."""
    public_key, private_key = keypair if keypair is not None else generate_keypair(key_bits)
    total = None
    for vector in vectors:
        encrypted = encrypt_vector(public_key, vector)
        total = encrypted if total is None else add_encrypted(total, encrypted)
    return decrypt_vector(private_key, total)
