"""The shared cell store: where a cell's run directory lives, who holds it, and where it stands. Torch-free.

Belongs here: :mod:`.claims` (atomic claims on ``<store>/<id>``, so two sweeps never train a cell twice; who holds
one, whether that holder is alive) and :mod:`.state` (a cell's state read from files alone: finished, running,
interrupted, failed, pending). Does not belong here: training under a claim (the cell's lifecycle,
:mod:`launch.worker.lifecycle`), the run folder's own files (:mod:`pipeline.results.run_folder`), Slurm's view of a
job (:mod:`launch.execution.slurm`).
"""
