"""The worker side: what runs inside a job or a worker process to train cells (submitit keeps it apart from the
submit side).

Belongs here: :mod:`.train` (`mkf train`: one cell in this process), :mod:`.lifecycle` (a cell's life around its
training: skip if finished, wait for another holder, claim, train, release), :mod:`.bundle` (several cells in one
process: a Slurm array task's bundle, the local executor's long-lived workers) and :mod:`.slurm_task` (inside a
Slurm step: preemption signals, periodic checkpoints, the restart policy). Imports torch only inside the functions
that train. Does not belong here: deciding what to train (:mod:`launch.planning`) or submitting and watching jobs
(:mod:`launch.execution`), which reaches these modules only as commands (``python -m launch.worker.bundle``,
``mkf train``) and exit statuses (:mod:`launch.core.exits`).
"""
