"""Per-order release counting of Fed-LTD's order weights (privacy accounting of eps_p: an
order waiting n batches is released n times) against a dictionary recomputation."""
import jax
import jax.numpy as jnp
import numpy as np

from fedrl.fedltd import protocol


def test_count_releases_matches_a_per_order_dictionary():
    rng = np.random.default_rng(0)
    K, P, B = 2, 6, 60
    valid = np.zeros((K, P), bool)
    order = np.full((K, P), -1, np.int32)
    next_id = 0
    counts = {}                                  # (platform, order id) -> releases
    state = protocol.ReleaseCount.zeros(jnp.asarray(order))
    step = jax.jit(protocol.count_releases)
    for _ in range(B):
        # orders leave (matched / expired) and new ones take free slots, as in Pending
        leave = valid & (rng.random((K, P)) < 0.3)
        valid &= ~leave
        order[~valid] = -1
        for k in range(K):
            for slot in np.flatnonzero(~valid[k] & (rng.random(P) < 0.4)):
                valid[k, slot], order[k, slot] = True, next_id
                next_id += 1
        released = valid & (rng.random() < 0.8)  # step 3 runs (or not) for all platforms
        for k, slot in zip(*np.nonzero(released)):
            counts[(k, order[k, slot])] = counts.get((k, order[k, slot]), 0) + 1
        state = step(state, jnp.asarray(valid), jnp.asarray(order), jnp.asarray(released))
        ref = np.array([[counts.get((k, order[k, p]), 0) if valid[k, p] else 0
                         for p in range(P)] for k in range(K)])
        np.testing.assert_array_equal(np.asarray(state.count), ref)
    assert max(counts.values()) >= 3      # some orders waited and were released repeatedly

