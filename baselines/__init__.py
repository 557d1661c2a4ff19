"""Classical controllers that operators actually run, written against the simulator's read-only views.

Importing this package (which importing ``envs`` does) registers every built-in
router, scaler and placer in the core's registries (``envs.sim.routing.ROUTERS``,
``envs.sim.controllers.SCALERS`` / ``PLACERS``).
"""

import envs  # noqa: F401  (imports the built-in controllers below, in an order free of import cycles)
