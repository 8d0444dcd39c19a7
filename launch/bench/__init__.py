"""Benchmarks of the launch layer: login-node command start-up (:mod:`.cli_timing`), planning/submitting a
10,000-cell sweep (:mod:`.sweep_submit`), the demo's cells per hour (:mod:`.sweep_cells`) and the catalog's cost
as an adaptive grid (:mod:`.catalog_costs`). The model and loader benchmarks are in :mod:`pipeline.bench`.
"""
