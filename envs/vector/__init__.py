"""Native vector environments: N simulations stepped per call through the compiled core.

Registered as each id's ``vector_entry_point``, so
``gymnasium.make_vec(env_id, num_envs=N, vectorization_mode="vector_entry_point", **kwargs)``
builds them (see ``docs/vector-envs.md``). Autoreset mode ``SAME_STEP``; sub-env ``i`` of a vector
env reset with ``seed=s`` follows the single env reset with ``seed=s + i`` bit for bit.
"""

from envs.vector.base import NativeVectorEnv

__all__ = ["NativeVectorEnv"]
