"""Classical controllers that operators actually run, written against the simulator's read-only view."""
