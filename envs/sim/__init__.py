"""The InferGym cluster simulator: configuration, workloads, performance model and engine.

Pure Python + numpy with a numba-compiled event loop; no gymnasium, no RL.
Entry points: :func:`run_scenario` (a scenario to its horizon with its
configured controllers, returning the episode KPIs), :class:`Simulator`
(step-by-step control, used by the environments) and :func:`load_scenario`.
"""

from envs.sim.config import Scenario, load_scenario, shipped_scenarios
from envs.sim.engine import Simulator, run_scenario
from envs.sim.errors import ConfigError
from envs.sim.metrics import KPI_KEYS
from envs.sim.perf import iteration_time_s, saturation_throughput

__all__ = [
    "KPI_KEYS",
    "ConfigError",
    "Scenario",
    "Simulator",
    "iteration_time_s",
    "load_scenario",
    "run_scenario",
    "saturation_throughput",
    "shipped_scenarios",
]
