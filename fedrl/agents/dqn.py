"""Deep Q-Network as pure functions: network, act, loss, update and a scanned local-training loop.

DQN: Mnih et al., "Human-level control through deep reinforcement learning", Nature 2015.
Double DQN: van Hasselt, Guez, Silver, "Deep Reinforcement Learning with Double Q-learning",
AAAI 2016. The layout follows PureJaxRL's ``dqn.py`` (a port of CleanRL's), with three of its
pitfalls avoided on purpose:

* keys are never re-created from a fixed seed inside training: every key is an argument and is
  derived with ``fold_in`` (per round, per party, per step), so vmapped parties explore
  independently;
* updates are scheduled on a per-agent step counter that advances by one per ``scan`` step
  (not ``timesteps % interval`` on a counter that jumps by the number of environments);
* only termination stops bootstrapping. Truncation at the episode horizon is not a terminal
  state; because the Gymnax-style environment auto-resets (the returned observation is the next
  episode's first), the one transition that crosses the horizon is not stored.

An agent runs ``E`` environments at once (E = 1 for a federated party; E = K hospitals for the
centralized reference that pools all experience), so its ``env_params`` carry a leading axis E.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from fedrl.agents import replay
from fedrl.config import ConfigError, require, require_in_range, require_positive

PyTree = Any


@dataclasses.dataclass(frozen=True)
class DQNConfig:
    """Every DQN knob. Defaults: the seed's 256-256 MLP, Adam, double DQN, Huber loss."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    learning_rate: float = 3e-4
    gamma: float = 0.99
    batch_size: int = 64
    buffer_capacity: int = 20_000
    learning_starts: int = 500        # transitions stored before the first gradient update
    train_every: int = 1              # env steps between gradient updates (per agent)
    target_update_every: int = 500    # gradient updates between target syncs (0: round sync
                                      # only, at each round start; see fed.sync_target_each_round)
    epsilon_start: float = 1.0
    epsilon_end: float = 0.05
    epsilon_decay_steps: int = 20_000  # env steps (per agent) of linear decay
    loss: Literal["huber", "mse"] = "huber"
    double_dqn: bool = True
    max_grad_norm: float = 10.0

    def validate(self) -> None:
        require(len(self.hidden_sizes) > 0 and all(int(h) > 0 for h in self.hidden_sizes),
                f"dqn.hidden_sizes must be positive layer widths, got {self.hidden_sizes!r}")
        require_positive("dqn.learning_rate", self.learning_rate)
        require_in_range("dqn.gamma", self.gamma, 0.0, 1.0, high_open=True)
        for name in ("batch_size", "buffer_capacity", "train_every"):
            require(int(getattr(self, name)) >= 1, f"dqn.{name} must be >= 1")
        require(self.learning_starts >= 0, "dqn.learning_starts must be >= 0")
        # Updates wait for buffer.size >= max(learning_starts, batch_size) and the buffer never
        # holds more than buffer_capacity transitions: past it the DQN would never train.
        require(max(self.batch_size, self.learning_starts) <= self.buffer_capacity,
                f"dqn.batch_size={self.batch_size} and dqn.learning_starts="
                f"{self.learning_starts} must not exceed dqn.buffer_capacity="
                f"{self.buffer_capacity}: the replay buffer would never hold enough transitions "
                "and the DQN would never update")
        require(self.target_update_every >= 0, "dqn.target_update_every must be >= 0")
        require_in_range("dqn.epsilon_start", self.epsilon_start, 0.0, 1.0)
        require_in_range("dqn.epsilon_end", self.epsilon_end, 0.0, 1.0)
        require(self.epsilon_decay_steps >= 1, "dqn.epsilon_decay_steps must be >= 1")
        require(self.loss in ("huber", "mse"), f"dqn.loss must be 'huber' or 'mse', got {self.loss!r}")
        require_positive("dqn.max_grad_norm", self.max_grad_norm)


class QNetwork(nn.Module):
    """MLP Q-network: obs -> Q-values, ReLU hidden layers (the seed's 256-256 by default).

    ``activation_scales``: one factor per hidden layer multiplying its activations (None: no
    scaling); federated dropout's sub-models use it for inverted-dropout scaling
    (:mod:`fedrl.federated.submodel`)."""
    hidden_sizes: tuple[int, ...]
    num_actions: int
    activation_scales: tuple[float, ...] | None = None

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        x = obs
        for i, width in enumerate(self.hidden_sizes):
            x = nn.relu(nn.Dense(width)(x))
            if self.activation_scales is not None:
                x = x * self.activation_scales[i]
        return nn.Dense(self.num_actions)(x)


@struct.dataclass
class Transition:
    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    next_obs: jax.Array
    terminated: jax.Array


@struct.dataclass
class DQNState:
    """One agent: online/target parameters, optimizer, replay buffer and its environments."""
    params: PyTree
    target_params: PyTree
    opt_state: optax.OptState
    buffer: replay.ReplayBuffer
    env_state: PyTree      # leading axis E
    obs: jax.Array         # [E, obs_dim]
    steps: jax.Array       # env steps taken by this agent (int32)
    updates: jax.Array     # gradient updates applied (int32)


class EnvFns(NamedTuple):
    """A Gymnax-style functional environment: ``reset(key, params)``, ``step(key, s, a, params)``."""
    reset: Callable
    step: Callable


class DQN(NamedTuple):
    """The pure functions of one DQN configuration (closures over the config)."""
    config: DQNConfig
    network: QNetwork
    optimizer: optax.GradientTransformation

    # -- parameters --------------------------------------------------------------------
    def init_params(self, key: jax.Array, obs_dim: int) -> PyTree:
        return self.network.init(key, jnp.zeros((obs_dim,), jnp.float32))

    def q_values(self, params: PyTree, obs: jax.Array) -> jax.Array:
        return self.network.apply(params, obs)

    # -- acting ------------------------------------------------------------------------
    def epsilon(self, steps: jax.Array) -> jax.Array:
        """Linear decay from epsilon_start to epsilon_end over epsilon_decay_steps."""
        c = self.config
        frac = jnp.clip(steps / c.epsilon_decay_steps, 0.0, 1.0)
        return c.epsilon_start + frac * (c.epsilon_end - c.epsilon_start)

    def act(self, key: jax.Array, params: PyTree, obs: jax.Array, epsilon: jax.Array) -> jax.Array:
        """Epsilon-greedy actions for a batch of observations [E, obs_dim] -> [E]."""
        q = self.q_values(params, obs)
        greedy = jnp.argmax(q, axis=-1).astype(jnp.int32)
        k_explore, k_action = jax.random.split(key)
        explore = jax.random.uniform(k_explore, greedy.shape) < epsilon
        random_action = jax.random.randint(k_action, greedy.shape, 0, q.shape[-1], jnp.int32)
        return jnp.where(explore, random_action, greedy)

    # -- learning ----------------------------------------------------------------------
    def loss(self, params: PyTree, target_params: PyTree, batch: Transition) -> jax.Array:
        """TD loss; double DQN picks the next action with the online network."""
        c = self.config
        q = self.q_values(params, batch.obs)
        q_taken = jnp.take_along_axis(q, batch.action[:, None], axis=-1)[:, 0]
        q_next_target = self.q_values(target_params, batch.next_obs)
        if c.double_dqn:
            next_action = jnp.argmax(self.q_values(params, batch.next_obs), axis=-1)
            q_next = jnp.take_along_axis(q_next_target, next_action[:, None], axis=-1)[:, 0]
        else:
            q_next = jnp.max(q_next_target, axis=-1)
        target = batch.reward + c.gamma * (1.0 - batch.terminated) * q_next
        td = q_taken - jax.lax.stop_gradient(target)
        if c.loss == "huber":
            return jnp.mean(optax.huber_loss(td, delta=1.0))
        return jnp.mean(0.5 * td ** 2)

    def update(self, state: DQNState, key: jax.Array) -> tuple[DQNState, jax.Array]:
        """One gradient step on a uniformly sampled batch (no warm-up check: see ``train_step``)."""
        batch = replay.sample(state.buffer, key, self.config.batch_size)
        loss, grads = jax.value_and_grad(self.loss)(state.params, state.target_params, batch)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return state.replace(params=params, opt_state=opt_state,
                             updates=state.updates + 1), loss

    # -- state -------------------------------------------------------------------------
    def init_state(self, key: jax.Array, env: EnvFns, env_params: PyTree,
                   params: PyTree | None = None) -> DQNState:
        """A fresh agent over ``E`` environments (``env_params`` with a leading axis E)."""
        k_params, k_env = jax.random.split(key)
        num_envs = jax.tree.leaves(env_params)[0].shape[0]
        obs, env_state = jax.vmap(env.reset)(jax.random.split(k_env, num_envs), env_params)
        if params is None:
            params = self.init_params(k_params, obs.shape[-1])
        example = Transition(obs=obs[0], action=jnp.zeros((), jnp.int32),
                             reward=jnp.zeros((), jnp.float32), next_obs=obs[0],
                             terminated=jnp.zeros((), jnp.float32))
        return DQNState(params=params, target_params=params,
                        opt_state=self.optimizer.init(params),
                        buffer=replay.init(example, self.config.buffer_capacity),
                        env_state=env_state, obs=obs,
                        steps=jnp.zeros((), jnp.int32), updates=jnp.zeros((), jnp.int32))

    def collect(self, env: EnvFns, state: DQNState, env_params: PyTree, k_act: jax.Array,
                k_env: jax.Array, active: jax.Array) -> tuple[DQNState, dict]:
        """One epsilon-greedy environment step in each of the agent's E environments, stored in
        the replay buffer. ``active`` (bool scalar) False freezes the agent: it lets parties with
        a smaller local budget (system heterogeneity) sit out the tail of a round with static
        shapes."""
        num_envs = state.obs.shape[0]
        action = self.act(k_act, state.params, state.obs, self.epsilon(state.steps))
        next_obs, env_state, reward, done, info = jax.vmap(env.step)(
            jax.random.split(k_env, num_envs), state.env_state, action, env_params)
        terminated = info["terminated"].astype(jnp.float32)
        truncated = jnp.logical_and(done, info["terminated"] == 0)
        transition = Transition(obs=state.obs, action=action, reward=reward.astype(jnp.float32),
                                next_obs=next_obs, terminated=terminated)
        # The buffer add is masked by ``active`` itself; only small leaves go through selects,
        # so a frozen agent costs no copy of its replay buffer.
        buffer = replay.add_batch(state.buffer, transition, valid=~truncated & active)
        moved = state.replace(
            buffer=buffer,
            env_state=tree_select(active, env_state, state.env_state),
            obs=jnp.where(active, next_obs, state.obs),
            steps=state.steps + active.astype(jnp.int32))
        metrics = {"reward": jnp.where(active, jnp.mean(reward), 0.0),
                   "episodes": jnp.where(active, jnp.sum(done), 0)}
        return moved, metrics

    def wants_update(self, state: DQNState) -> jax.Array:
        """The update schedule, read after ``collect``: a gradient step every ``train_every``
        env steps once the buffer holds ``max(learning_starts, batch_size)`` transitions."""
        c = self.config
        return ((state.buffer.size >= max(c.learning_starts, c.batch_size))
                & (state.steps % c.train_every == 0))

    def sync_due(self, state: DQNState) -> jax.Array:
        """Whether the update just applied is one on which the target network is synced."""
        every = self.config.target_update_every
        if every <= 0:
            return jnp.zeros(state.updates.shape, bool)
        return state.updates % every == 0

    def train_step(self, env: EnvFns, state: DQNState, env_params: PyTree, key: jax.Array,
                   active: jax.Array) -> tuple[DQNState, dict]:
        """One environment step in each of the agent's E environments plus (maybe) one update.

        The update runs under ``lax.cond``, so one agent skips it for real. Under ``vmap`` the
        cond becomes a select over every parameter and both branches run: to train several
        agents at once use :meth:`train_parties`, which decides once per step for all of them.
        """
        k_act, k_env, k_update = jax.random.split(key, 3)
        moved, metrics = self.collect(env, state, env_params, k_act, k_env, active)
        do_update = active & self.wants_update(moved)

        # Only the fields an update changes go through the cond (not the replay buffer, which
        # XLA might otherwise copy to the cond's output).
        def learn(s):
            new, loss = self.update(s, k_update)
            target = jax.lax.cond(self.sync_due(new), lambda: new.params,
                                  lambda: new.target_params)
            return _learned(new.replace(target_params=target)), loss

        learned, loss = jax.lax.cond(do_update, learn, lambda s: (_learned(s), jnp.zeros(())),
                                     moved)
        new_state = moved.replace(**learned)
        metrics = {**metrics, "loss": loss, "updated": do_update.astype(jnp.int32)}
        return new_state, metrics

    def train(self, env: EnvFns, state: DQNState, env_params: PyTree, key: jax.Array,
              num_steps: int, budget: jax.Array | int | None = None) -> tuple[DQNState, dict]:
        """``num_steps`` train steps of one agent as one ``lax.scan``; steps >= ``budget`` are
        skipped.

        Returns the final state and per-run metrics: summed reward per environment, mean loss,
        the number of gradient updates and of environment transitions collected.
        """
        budget = num_steps if budget is None else budget

        def body(carry, t):
            new, metrics = self.train_step(env, carry, env_params, jax.random.fold_in(key, t),
                                           t < budget)
            return new, metrics

        state, metrics = jax.lax.scan(body, state, jnp.arange(num_steps))
        return state, _summary(metrics, budget, num_steps, state.obs.shape[0])

    def train_parties(self, env: EnvFns, states: DQNState, env_params: PyTree, keys: jax.Array,
                      num_steps: int, budgets: jax.Array | None = None,
                      gating: Literal["switch", "mask"] = "switch",
                      chunk: int = 0) -> tuple[DQNState, dict]:
        """Local training of P agents at once (leading axis P on ``states``, ``env_params``,
        ``keys`` and ``budgets``): a ``lax.scan`` over steps of a ``vmap`` over agents.

        ``chunk`` > 0 trains the agents in groups of ``chunk`` one after another (a
        ``lax.map`` over groups, each group a scan over steps of a vmap over its agents; a
        last, smaller group when ``chunk`` does not divide P); 0 trains all P together. Each
        agent's result is the same either way up to float rounding (agents never interact, but
        XLA may pick other matmul kernels for another group size: ~1e-6 apart on the hospital
        round after 128 steps, not bit for bit). A group's networks,
        optimizer moments and replay buffers stay in cache over its steps, where all P at
        once may not fit (``scripts/bench.py --only fed_dqn`` measures it).

        Same result as ``vmap`` of :meth:`train` (tested), but faster: the gradient update is
        decided once per step for the whole cohort -- every agent updates (the usual case:
        equal budgets, the same schedule), none does, or some do (unequal budgets or buffer
        sizes), in which case only that step pays for a masked update -- where ``vmap(train)``
        turns each agent's ``cond`` into a select that copies every parameter and optimizer
        moment on every step. The target sync is decided the same way.

        ``gating="mask"`` instead computes the update on every step and keeps it where due (no
        conditional in the loop): the same result, for accelerators where a data-dependent
        branch costs a device-to-host sync per step (not measured here: no GPU was lent). On
        CPU "switch" measured as fast with one update per step and skips the work of steps
        without one.
        """
        if gating not in ("switch", "mask"):
            raise ConfigError(f"gating must be 'switch' or 'mask', got {gating!r}")
        if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 0:
            raise ConfigError(f"chunk must be an integer >= 0 (0 = all agents at once), "
                              f"got {chunk!r}")
        num_agents = keys.shape[0]
        budgets = (jnp.full((num_agents,), num_steps, jnp.int32) if budgets is None
                   else jnp.asarray(budgets, jnp.int32))
        if 0 < chunk < num_agents:
            def group(args):
                group_states, group_env, group_keys, group_budgets = args
                return self.train_parties(env, group_states, group_env, group_keys, num_steps,
                                          group_budgets, gating=gating)
            return in_groups(group, chunk, (states, env_params, keys, budgets))
        collect = jax.vmap(lambda s, p, ka, ke, a: self.collect(env, s, p, ka, ke, a))
        update = jax.vmap(self.update)

        def body(carry, t):
            step_keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, t), 3))(keys)
            active = t < budgets
            moved, metrics = collect(carry, env_params, step_keys[:, 0], step_keys[:, 1], active)
            do = active & jax.vmap(self.wants_update)(moved)

            def learn_all(s):
                new, loss = update(s, step_keys[:, 2])
                return _learned(new), loss

            def learn_some(s):
                learned, loss = learn_all(s)
                return tree_select(do, learned, _learned(s)), jnp.where(do, loss, 0.0)

            def learn_none(s):
                return _learned(s), jnp.zeros_like(s.updates, jnp.float32)

            if gating == "mask":
                learned, loss = learn_some(moved)
            else:
                branch = jnp.where(jnp.all(do), 2, jnp.where(jnp.any(do), 1, 0))
                learned, loss = jax.lax.switch(branch, (learn_none, learn_some, learn_all), moved)
            new = moved.replace(**learned)
            sync = do & jax.vmap(self.sync_due)(new)
            if gating == "mask":
                target = tree_select(sync, new.params, new.target_params)
            else:
                target = jax.lax.cond(jnp.any(sync),
                                      lambda: tree_select(sync, new.params, new.target_params),
                                      lambda: new.target_params)
            new = new.replace(target_params=target)
            metrics = {**metrics, "loss": loss, "updated": do.astype(jnp.int32)}
            return new, metrics

        states, metrics = jax.lax.scan(body, states, jnp.arange(num_steps))
        return states, _summary(metrics, budgets, num_steps, states.obs.shape[1])

    def greedy_policy(self, params: PyTree) -> Callable:
        """A policy ``(key, obs, env_state, env_params) -> action`` acting greedily."""
        def policy(key, obs, env_state, env_params):
            del key, env_state, env_params
            return jnp.argmax(self.q_values(params, obs), axis=-1).astype(jnp.int32)
        return policy


def in_groups(fn: Callable, size: int, args: PyTree) -> PyTree:
    """``fn(args)`` for pytrees with a leading axis N, computed on groups of ``size`` along it
    one after another (``lax.map`` over the full groups, then one call on the rest) and
    concatenated back. ``fn`` must map a group's leading axis to its outputs' leading axis."""
    n = jax.tree.leaves(args)[0].shape[0]
    full = n // size * size
    head = jax.tree.map(lambda x: x[:full].reshape((n // size, size) + x.shape[1:]), args)
    out = jax.tree.map(lambda y: y.reshape((full,) + y.shape[2:]), jax.lax.map(fn, head))
    if full == n:
        return out
    tail = fn(jax.tree.map(lambda x: x[full:], args))
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), out, tail)


def tree_select(pred: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    """``where(pred, on_true, on_false)`` leaf by leaf; a ``[P]`` predicate selects per agent
    on leaves with a leading axis P."""
    def pick(a, b):
        p = jnp.reshape(pred, jnp.shape(pred) + (1,) * (jnp.ndim(a) - jnp.ndim(pred)))
        return jnp.where(p, a, b)
    return jax.tree.map(pick, on_true, on_false)


def _learned(state: DQNState) -> dict:
    """The fields a gradient update (and target sync) changes."""
    return {"params": state.params, "target_params": state.target_params,
            "opt_state": state.opt_state, "updates": state.updates}


def _summary(metrics: dict, budget, num_steps: int, num_envs: int) -> dict:
    """Per-run metrics from per-step ones (leading axis: steps; then agents, if any)."""
    steps_run = jnp.minimum(budget, num_steps)
    num_updates = jnp.sum(metrics["updated"], axis=0)
    return {"reward_per_step": jnp.sum(metrics["reward"], axis=0) / jnp.maximum(steps_run, 1),
            "loss": jnp.sum(metrics["loss"], axis=0) / jnp.maximum(num_updates, 1),
            "updates": num_updates,
            "transitions": steps_run * num_envs,
            "episodes": jnp.sum(metrics["episodes"], axis=0)}


def make_dqn(config: DQNConfig, num_actions: int) -> DQN:
    """Build the DQN functions: network from ``hidden_sizes``, clipped Adam optimizer."""
    config.validate()
    network = QNetwork(hidden_sizes=tuple(int(h) for h in config.hidden_sizes),
                       num_actions=num_actions)
    optimizer = optax.chain(optax.clip_by_global_norm(config.max_grad_norm),
                            optax.adam(config.learning_rate))
    return DQN(config=config, network=network, optimizer=optimizer)
