"""Benchmarks of the launch layer: login-node command start-up (:mod:`.cli_timing`) and planning/submitting a
10,000-cell sweep (:mod:`.sweep_submit`). The model and loader benchmarks are in :mod:`pipeline.bench`.
"""
