"""A tiny Gymnax-style contextual task for agent tests: reward 1 when the action names the
hidden context shown (one-hot) in the observation; episodes are truncated after ``horizon``."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from fedrl.agents.dqn import EnvFns

NUM_CONTEXTS = 4


@struct.dataclass
class ToyParams:
    horizon: jax.Array          # int32
    reward_scale: jax.Array     # float32


@struct.dataclass
class ToyState:
    context: jax.Array
    t: jax.Array


def make_params(horizon=8, reward_scale=1.0) -> ToyParams:
    return ToyParams(horizon=jnp.asarray(horizon, jnp.int32),
                     reward_scale=jnp.asarray(reward_scale, jnp.float32))


def _obs(state):
    return jax.nn.one_hot(state.context, NUM_CONTEXTS, dtype=jnp.float32)


def reset(key, params):
    del params
    state = ToyState(context=jax.random.randint(key, (), 0, NUM_CONTEXTS),
                     t=jnp.zeros((), jnp.int32))
    return _obs(state), state


def step(key, state, action, params):
    reward = params.reward_scale * (action == state.context).astype(jnp.float32)
    t = state.t + 1
    done = t >= params.horizon
    nxt = ToyState(context=jax.random.randint(key, (), 0, NUM_CONTEXTS), t=jnp.where(done, 0, t))
    info = {"terminated": jnp.zeros((), bool), "truncated": done}
    return _obs(nxt), nxt, reward, done, info


ENV = EnvFns(reset=reset, step=step)


def stacked_params(num_parties: int, num_envs: int = 1, **kw) -> ToyParams:
    p = make_params(**kw)
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (num_parties, num_envs)), p)
