"""Sweeps of cells, run locally or on Slurm, and the ``mkf`` command line: everything above :mod:`pipeline`.

Rooms, highest first (imports only run downwards; checked by import-linter, see pyproject.toml):
:mod:`.cli` (the parser) > :mod:`.commands` (one function per verb) > :mod:`.demo` | :mod:`.bench` >
:mod:`.views` (tables, status, reports, dashboards) > :mod:`.execution` (the submit side: executors, local and
Slurm) | :mod:`.worker` (what runs inside a job: mkf train, bundles, the cell lifecycle) > :mod:`.store` (claims,
cell state) > :mod:`.planning` (the sweeper: YAML -> plan) > :mod:`.core` (the plan as plain data).
"""
