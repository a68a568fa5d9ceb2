"""Server halves of fedsim's algorithms, one module per algorithm.

They are published to the core's registry (:mod:`fedsim.algorithms.registry`) by the entry points
in ``pyproject.toml``, which name the specs in :mod:`strategies.specs`; nothing in the
core imports this package.
"""
