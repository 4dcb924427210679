"""Federated Dropout: each party trains a smaller sub-model of the global Q-network.

Caldas, Konecny, McMahan, Talwalkar, "Expanding the Reach of Federated Learning by Reducing
Client Resource Requirements", arXiv:1812.07210, 2018 (seed 000's "Federated Dropout: train
smaller subnetworks"). Each round the server picks, for every selected party, a fixed fraction
``rate`` of the units of every hidden layer to drop (structured dropout: a dropped unit takes
its column of the layer's kernel, its bias and its row of the next layer's kernel with it; the
input and output layers keep all their units). The party receives the smaller network, trains
it locally (fewer FLOPs, a smaller optimizer state) and sends back the update of the
sub-model's parameters only; the server maps it back into the global model's coordinates.

Choices the paper leaves open, each a knob of :class:`~fedrl.federated.round.FederatedConfig`
[reconstructed]:

* **Which units** (``fed.submodel_draw``): ``"per_round"`` (default) draws one uniformly
  random subset per round, shared by the whole cohort; ``"per_party"`` draws one per party and
  round (``fold_in`` of the round key with the party id). The paper's text is not at hand here;
  later work (Verardo et al., "Fast Server Learning Rate Tuning for Coded Federated Dropout",
  arXiv:2201.11036, 2022) presents sub-models that differ between clients as its own
  extension, hence the default. Every party keeps the same number of units either way.
* **Scaling** (``fed.submodel_rescale``, default True): the kept activations of hidden layer
  l are multiplied by ``width_l / kept_l`` while the party trains (inverted dropout,
  Srivastava et al. 2014), so that the sub-model's pre-activations start as an estimate of the
  full model's; the global model is evaluated and served without any scaling. False trains the
  sub-network as it is.
* **Aggregation** (``fed.submodel_aggregation``): ``"coverage"`` (default) averages each
  coordinate over the participating parties whose sub-model holds it (weights as the
  aggregator's mean; a coordinate nobody trained gets a zero update); ``"zero_fill"`` treats a
  coordinate outside a party's sub-model as a zero update and averages over every participant
  (a dropped coordinate's update shrinks by the share of parties that dropped it). DP and
  secure aggregation sum the zero-filled updates (their sensitivity and masking are unchanged:
  a zero-filled update is an ordinary update inside the clip ball) and need ``"zero_fill"``
  with per-party draws. Under ``"per_round"`` every party covers the same coordinates and the
  two coincide (no coverage is computed). FedNova with coverage keeps one tau_eff over all
  participants. A zero update leaves a coordinate as it was under the default server SGD;
  FedAvgM's momentum and FedAdam's moments still move it.
* **Optimizer state and target network.** A party keeps full-size Adam moments and target
  network between rounds; each round the sub-model's coordinates are cut out of them and
  written back after training (the other coordinates keep their values). Adam's step count is
  one per party, so moments of coordinates left out of recent rounds are bias-corrected as if
  updated.

The sub-model is a plain smaller network (static shapes: ``kept_l`` units in hidden layer l),
cut out of the full one with gathers and written back with scatters; under ``vmap`` each party
has its own unit indices.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from fedrl.agents.dqn import DQN, DQNState, QNetwork
from fedrl.config import require, require_in_range

PyTree = Any
Units = tuple  # one [kept_l] int32 array of unit indices per hidden layer

# fold_in salt of the sub-model draw (keeps the round's other keys as they were).
SUBMODEL_KEY_SALT = 0x5D40


def kept_units(hidden_sizes: Sequence[int], rate: float) -> tuple[int, ...]:
    """Units each hidden layer keeps when a fraction ``rate`` is dropped:
    ``round((1 - rate) * width)`` (Python's round: halves to even), at least 1."""
    require_in_range("fed.submodel_rate", rate, 0.0, 1.0, high_open=True)
    return tuple(max(1, int(round((1.0 - rate) * int(h)))) for h in hidden_sizes)


def dropping_units(hidden_sizes: Sequence[int], rate: float, setting: str) -> tuple[int, ...]:
    """:func:`kept_units`, refusing a ``rate`` (named ``setting`` in the message) that drops no
    unit of any layer: such a "sub-model" is the full model."""
    widths = tuple(int(h) for h in hidden_sizes)
    kept = kept_units(widths, rate)
    require(kept != widths,
            f"{setting}={rate} drops no unit of hidden layers {widths} (round((1 - rate) * "
            "width) = width for each): raise it")
    return kept


def sample_units(key: jax.Array, hidden_sizes: Sequence[int], kept: Sequence[int]) -> Units:
    """One uniformly random subset of ``kept[l]`` of the ``hidden_sizes[l]`` units per hidden
    layer (sorted indices; layer l draws with ``fold_in(key, l)``)."""
    return tuple(jnp.sort(jax.random.permutation(jax.random.fold_in(key, l), int(h))[:int(k)])
                 .astype(jnp.int32)
                 for l, (h, k) in enumerate(zip(hidden_sizes, kept)))


def _dense_layers(params: PyTree) -> list[str]:
    layers = params["params"]
    require(all(n.startswith("Dense_") and n[6:].isdigit() for n in layers),
            f"federated dropout expects an MLP of Dense layers, got layers {list(layers)}")
    return sorted(layers, key=lambda n: int(n[6:]))


def _slices(num_layers: int, units: Units):
    """(rows, cols) index arrays or None (all) of each Dense layer's kernel."""
    require(len(units) == num_layers - 1,
            f"{len(units)} hidden-layer unit sets for a network of {num_layers} Dense layers")
    rows = (None,) + tuple(units)
    cols = tuple(units) + (None,)
    return rows, cols


def extract(params: PyTree, units: Units) -> PyTree:
    """The sub-model's parameters: each hidden layer's kept units (kernel columns and bias)
    and, in the next layer, the kernel rows that read them."""
    names = _dense_layers(params)
    rows, cols = _slices(len(names), units)
    out = {}
    for name, r, c in zip(names, rows, cols):
        kernel, bias = params["params"][name]["kernel"], params["params"][name]["bias"]
        if r is not None:
            kernel = kernel[r]
        if c is not None:
            kernel, bias = kernel[:, c], bias[c]
        out[name] = {"kernel": kernel, "bias": bias}
    return {"params": out}


def embed(sub: PyTree, full: PyTree, units: Units) -> PyTree:
    """``full`` with the sub-model's coordinates replaced by ``sub`` (the inverse of
    :func:`extract` on those coordinates; every other coordinate of ``full`` is kept)."""
    names = _dense_layers(full)
    rows, cols = _slices(len(names), units)
    out = {}
    for name, r, c in zip(names, rows, cols):
        kernel = full["params"][name]["kernel"]
        bias = full["params"][name]["bias"]
        sk, sb = sub["params"][name]["kernel"], sub["params"][name]["bias"]
        r_idx = jnp.arange(kernel.shape[0]) if r is None else r
        c_idx = jnp.arange(kernel.shape[1]) if c is None else c
        kernel = kernel.at[r_idx[:, None], c_idx[None, :]].set(sk)
        bias = bias.at[c_idx].set(sb)
        out[name] = {"kernel": kernel, "bias": bias}
    return {"params": out}


def coverage(full: PyTree, units: Units) -> PyTree:
    """1.0 on the coordinates of ``full`` that the sub-model holds, 0.0 elsewhere."""
    zeros = jax.tree.map(jnp.zeros_like, full)
    return embed(jax.tree.map(jnp.ones_like, extract(full, units)), zeros, units)


def map_params_like(fn, params_structure, tree: PyTree, *others: PyTree) -> PyTree:
    """``fn(node, *other_nodes)`` on every subtree of ``tree`` shaped like the parameters (an
    optimizer state's moments, say; ``others`` have ``tree``'s structure); every other leaf
    (step counts) is taken from ``tree`` as it is."""
    like = lambda node: jax.tree.structure(node) == params_structure
    return jax.tree.map(lambda node, *rest: fn(node, *rest) if like(node) else node, tree,
                        *others, is_leaf=like)


def cut_state(party: DQNState, units: Units) -> DQNState:
    """One party's state with its sub-model's weights, target network and optimizer moments."""
    cut = lambda p: extract(p, units)
    return party.replace(params=cut(party.params), target_params=cut(party.target_params),
                         opt_state=map_params_like(cut, jax.tree.structure(party.params),
                                                   party.opt_state))


def paste_state(trained: DQNState, full: DQNState, units: Units) -> DQNState:
    """A party's trained sub-model state written back into its full-size state ``full``:
    coordinates outside the sub-model keep ``full``'s values."""
    paste = lambda sub, whole: embed(sub, whole, units)
    return trained.replace(
        params=paste(trained.params, full.params),
        target_params=paste(trained.target_params, full.target_params),
        opt_state=map_params_like(paste, jax.tree.structure(full.params), trained.opt_state,
                                  full.opt_state))


def submodel_dqn(dqn: DQN, kept: Sequence[int], rescale: bool) -> DQN:
    """The DQN a party trains under federated dropout: ``kept`` hidden units per layer, the
    same optimizer and config otherwise; with ``rescale`` the hidden activations are scaled
    by width / kept (inverted dropout)."""
    widths = tuple(int(h) for h in dqn.config.hidden_sizes)
    kept = tuple(int(k) for k in kept)
    scales = tuple(w / k for w, k in zip(widths, kept)) if rescale else None
    network = QNetwork(hidden_sizes=kept, num_actions=dqn.network.num_actions,
                       activation_scales=scales)
    config = dataclasses.replace(dqn.config, hidden_sizes=kept)
    return DQN(config=config, network=network, optimizer=dqn.optimizer)


def num_submodel_params(params: PyTree, kept: Sequence[int]) -> int:
    """Parameters of the sub-model of ``params`` keeping ``kept`` units per hidden layer (what a
    party receives and sends each round), counted on the shapes :func:`extract` gives."""
    units = tuple(jnp.zeros((int(k),), jnp.int32) for k in kept)
    shapes = jax.eval_shape(extract, params, units)
    return sum(int(x.size) for x in jax.tree.leaves(shapes))
