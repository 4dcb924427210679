"""fedrl: privacy-preserving federated reinforcement learning in JAX.

Federated DQN for hospital scheduling (``fedrl.envs.hospital``, ``fedrl.agents``,
``fedrl.federated``), the privacy layer (``fedrl.privacy``), and the ride-hailing dispatch core
of Fed-LTD (``fedrl.data``, ``fedrl.dispatch``, ``fedrl.matching``). See README.md.
"""

__version__ = "0.1.0"
