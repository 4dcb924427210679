"""Test-session settings.

Most of the suite's time on a 2-core CI machine is XLA compilation, not computation: the tests
run small shapes once. ``jax_disable_most_optimizations`` roughly halves compile time and
does not change what the programs compute (benchmarks and experiments run fully optimized).
"""
import jax

jax.config.update("jax_disable_most_optimizations", True)
