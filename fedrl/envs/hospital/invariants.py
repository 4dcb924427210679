"""Conservation and consistency checks of an ``EnvState`` (used by tests; jit/vmap-able)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fedrl.envs.hospital.types import EMPTY, IN_BED, WAITING, WITH_PROVIDER, EnvState


def check_invariants(state: EnvState) -> dict[str, jax.Array]:
    """Boolean arrays (shape = the state's batch shape) that must all be True.

    * ``conservation``: arrived == waiting + with_provider + in_bed + completed
      + transferred_out + lwbs + diverted;
    * ``started``: started == with_provider + in_bed + completed;
    * ``provider_done``: provider_done == in_bed + completed;
    * ``nonnegative``: every counter >= 0 and pending transfers >= 0;
    * ``masks``: queue in 0..2 exactly for WAITING slots (-1 otherwise); empty slots have zeroed
      attributes; status in 0..3; ESI index in 0..4;
    * ``times``: remaining provider/bed times finite and bed time >= 0 while in a bed.
    """
    p, c = state.patients, state.counters
    count = lambda s: jnp.sum(p.status == s, axis=-1, dtype=jnp.int32)  # noqa: E731
    n_wait, n_prov, n_bed = count(WAITING), count(WITH_PROVIDER), count(IN_BED)
    waiting = p.status == WAITING
    empty = p.status == EMPTY
    queue_ok = jnp.where(waiting, (p.queue >= 0) & (p.queue < 3), p.queue == -1)
    empty_ok = ~empty | ((p.esi == 0) & (p.arrival == 0) & (p.service_left == 0)
                         & (p.bed_left == 0) & ~p.needs_equipment & ~p.admitted)
    counters = jax.tree.leaves(c)
    nonneg = jnp.all(jnp.stack([x >= 0 for x in counters]), axis=0)
    nonneg = nonneg & jnp.all(state.pending_transfers_in >= 0, axis=-1)
    return {
        "conservation": c.arrived == (n_wait + n_prov + n_bed + c.completed + c.transferred_out
                                      + c.lwbs + c.diverted),
        "started": c.started == n_prov + n_bed + c.completed,
        "provider_done": c.provider_done == n_bed + c.completed,
        "nonnegative": nonneg,
        "masks": jnp.all(queue_ok & empty_ok & (p.status >= 0) & (p.status <= 3)
                         & (p.esi >= 0) & (p.esi <= 4), axis=-1),
        "times": jnp.all(jnp.isfinite(p.service_left) & jnp.isfinite(p.bed_left)
                         & ((p.status != IN_BED) | (p.bed_left > -1e-3))
                         & ((p.status != WITH_PROVIDER) | (p.service_left > 0)), axis=-1),
    }
