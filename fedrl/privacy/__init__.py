"""Privacy for federated learning: DP accounting and mechanisms, fixed-point quantization,
mask-based secure aggregation (Bonawitz et al. 2017) with Shamir dropout recovery, and an
optional Paillier baseline.

Import the submodules directly (``from fedrl.privacy import accounting``). Nothing here imports
``phe`` (GPLv3): :mod:`fedrl.privacy.paillier` does so lazily, inside its functions.
"""
