"""Reference G/G/c FIFO queue in SimPy: the yardstick the benchmark measures the engine against.

It is written the way a typical SimPy user would write it (a source process that spawns one
process per request, one ``simpy.Resource`` with ``capacity=servers``) so that its speed is a
fair baseline, and kept strictly correct so its waits are a second check next to queueing
theory. Arrival and service times are inputs, so the engine and this model can be fed the
same stream.
"""

from __future__ import annotations

import numpy as np
import simpy

from envs.sim.errors import ConfigError, check_number, fail


def simpy_central_queue(arrival_s: np.ndarray, service_s: np.ndarray, servers: int) -> dict[str, float]:
    """Simulate one FIFO queue in front of ``servers`` identical servers.

    ``arrival_s`` must be sorted (ties are served in array order); ``service_s[i]`` is request
    ``i``'s service time. Returns ``requests``, ``wait_mean_s`` (arrival to service start),
    ``sojourn_mean_s`` (arrival to departure) and ``end_s`` (last departure).
    """
    arrivals = np.asarray(arrival_s, dtype=np.float64)
    services = np.asarray(service_s, dtype=np.float64)
    capacity = check_number(
        "servers", servers.item() if isinstance(servers, np.generic) else servers, ge=1, integer=True
    )
    if arrivals.ndim != 1 or services.shape != arrivals.shape:
        raise fail("service_s", services.shape, f"must have the shape of arrival_s {arrivals.shape}")
    if not (np.all(np.isfinite(arrivals)) and np.all(np.isfinite(services))):
        raise ConfigError("arrival_s/service_s: must be finite")
    if arrivals.size and (arrivals[0] < 0 or np.any(np.diff(arrivals) < 0)):
        raise ConfigError("arrival_s: must be >= 0 and sorted ascending")
    if np.any(services < 0):
        raise ConfigError("service_s: must be >= 0")

    env = simpy.Environment()
    pool = simpy.Resource(env, capacity=capacity)
    totals = {"wait": 0.0, "sojourn": 0.0}

    def request(arrived: float, service: float):
        with pool.request() as slot:
            yield slot
            totals["wait"] += env.now - arrived
            yield env.timeout(service)
        totals["sojourn"] += env.now - arrived

    def source():
        for arrived, service in zip(arrivals.tolist(), services.tolist(), strict=True):
            # Wait for the absolute arrival time (not a stored gap) so float drift cannot accumulate;
            # max() guards against a rounding step that lands env.now a hair past it.
            yield env.timeout(max(arrived - env.now, 0.0))
            env.process(request(arrived, service))

    env.process(source())
    env.run()
    n = int(arrivals.size)
    return {
        "requests": n,
        "wait_mean_s": totals["wait"] / n if n else float("nan"),
        "sojourn_mean_s": totals["sojourn"] / n if n else float("nan"),
        "end_s": float(env.now),
    }
