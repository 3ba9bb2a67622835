"""Helpers of the reliability suites: a fault-injecting store, a fault server, invariant checks."""
