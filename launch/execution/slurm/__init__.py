"""The Slurm backend: a sweep's cells as job arrays, one per (stage, profile, base tasks waited for).

Belongs here: :mod:`.executor` (``SlurmExecutor``: what to submit, grouped by the base tasks each cell waits for;
Slurm's view for `mkf sweep status`; cancelling), :mod:`.script` (the batch scripts, the arrays' sbatch command
lines, bundles of short cells) and :mod:`.commands` (the Slurm client commands, the job books, the cluster's
limits). The profiles a job asks Slurm for are configuration (:mod:`launch.planning.profiles`); what runs inside
a task is :mod:`launch.worker`.
"""
