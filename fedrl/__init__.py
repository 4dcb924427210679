"""fedrl: privacy-preserving federated reinforcement learning in JAX.

Federated DQN for hospital scheduling (``fedrl.envs.hospital``, ``fedrl.agents``,
``fedrl.federated``), the privacy layer (``fedrl.privacy``), and the ride-hailing dispatch core
of Fed-LTD (``fedrl.data``, ``fedrl.dispatch``, ``fedrl.matching``). See README.md.
"""

__version__ = "0.1.0"

# Opt-in: FEDRL_INTRA_OP_THREADS=n sizes XLA:CPU's intra-op thread pool (see fedrl.host_cpu).
from fedrl import host_cpu as _host_cpu  # noqa: E402

_host_cpu.from_environment()
