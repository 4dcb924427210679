"""Shamir t-of-n secret sharing over a prime field (host-side Python integers).

Shamir, "How to Share a Secret", CACM 1979: a secret s is the constant term of a random
polynomial f of degree t-1 over GF(p); party x (x = 1..n) holds f(x); any t shares recover
s = f(0) by Lagrange interpolation, fewer reveal nothing. Secure aggregation (Bonawitz et al.,
CCS 2017) uses it so the server can remove the masks of parties that drop out.

The field is GF(2^127 - 1) (a Mersenne prime), large enough for the 64-bit PRG seeds we share.
Polynomial coefficients come from the caller's ``random.Random``: reproducible for the
simulation, **not** a cryptographic source (a deployment would use ``secrets``).
Pure Python: fine for the modest n of a simulation (cost O(n t) per secret).
"""
from __future__ import annotations

import random

from fedrl.config import require

PRIME = 2 ** 127 - 1


def split(secret: int, n_shares: int, threshold: int, rng: random.Random) -> list[tuple[int, int]]:
    """Shares ``[(x, f(x)) for x in 1..n_shares]`` of ``secret`` with threshold t."""
    require(1 <= threshold <= n_shares,
            f"Shamir threshold must satisfy 1 <= t <= n, got t={threshold}, n={n_shares}")
    require(0 <= secret < PRIME, "Shamir secret must lie in [0, 2^127 - 1)")
    coefficients = [secret] + [rng.randrange(PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in range(1, n_shares + 1):
        y = 0
        for c in reversed(coefficients):  # Horner's rule
            y = (y * x + c) % PRIME
        shares.append((x, y))
    return shares


def reconstruct(shares: list[tuple[int, int]]) -> int:
    """f(0) from (at least t) distinct shares by Lagrange interpolation at 0."""
    xs = [x for x, _ in shares]
    require(len(set(xs)) == len(xs), "Shamir reconstruction needs distinct share indices")
    secret = 0
    for i, (xi, yi) in enumerate(shares):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * (-xj) % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    return secret
