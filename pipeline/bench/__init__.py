"""Benchmarks that print figures: Lightning vs a plain loop (:mod:`.train`), GPU throughput per arch, precision
and loader (:mod:`.gpu`), and the loaders against their decode limits (:mod:`.loader`).

Belongs here: measuring, never training a cell for its result. The launch-level benchmarks (CLI start-up, sweep
submission) live in :mod:`launch.bench`, above the executors they time.
"""
