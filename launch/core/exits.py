"""Exit statuses that the submit side and the worker side share, so an executor (and the batch script) reads a
worker's exit status without importing the worker's modules (and the torch they load)."""

EXIT_PREEMPTED = 3  # stopped on a preemption signal after checkpointing; the job was requeued: rerun resumes
EXIT_REQUEUE_FAILED = 4  # stopped on the time-limit warning, but `scontrol requeue` failed: the task must FAIL
EXIT_DEVICE = 5  # a device error (CUDA) ended the worker: its remaining cells need a fresh process (requeue)
EXIT_HUNG = 6  # a cell ran past its time limit in a bundle: charged a failure; the rest need a fresh process
EX_TEMPFAIL = 75  # a cell another holder trains was left to it: try again later (sysexits.h)
