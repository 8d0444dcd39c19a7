"""The launcher, the submit side: runs a plan's cells behind one executor interface and returns an outcome per
cell (Hydra's launcher, apart from the sweeper that plans). Torch-free.

Belongs here: :mod:`.base` (the executor interface and the outcome it returns), :mod:`.registry` (executors by
name), :mod:`.local` (this machine: processes and long-lived bundle workers), :mod:`.slurm` (job arrays: one
folder for the backend), :mod:`.run` (`mkf sweep run`), :mod:`.rounds` (running adaptive rounds, the Slurm planner
job), :mod:`.cancel` (`mkf sweep cancel`) and :mod:`.prepare_run` (running a sweep's data writes). Does not belong
here: what runs inside a job (:mod:`launch.worker`, reached only as a command line and an exit status), deciding
what to train (:mod:`launch.planning`), printing plans and states (:mod:`launch.views`; a dry run is handed the
views' ``print_plan`` by its command).
"""
