"""The sweeper: pure functions from sweep YAML to plans (what to train), apart from the launcher that runs them.
Torch-free.

Belongs here: :mod:`.schema` (the sweep YAML as pydantic models), :mod:`.depths` (depth grids and the adaptive
spec), :mod:`.grid` (a sweep expanded into content-addressed cells), :mod:`.adaptive` (adaptive rounds: their state
and how the next one is decided), :mod:`.planner` (``plan_sweep``: the grid and its rounds; ``resolve_plan``),
:mod:`.catalog` (several sweeps as one plan), :mod:`.cost` (GPU-hours before submit), :mod:`.prepare` (the data
writes a sweep needs), :mod:`.smoke` (smoke-scale copies of sweeps) and :mod:`.profiles` (the Slurm profiles as
configuration: the schema checks a sweep's stages against them). Does not belong here: running, submitting or
writing data (:mod:`launch.execution`), the cell store (:mod:`launch.store`), tables (:mod:`launch.views`).
"""
