"""What every loader worker process of this project does first: leave preemption signals to the trainer.

On a preemption Slurm signals *every* process of the job step (``scancel --signal``, ``scontrol requeue``, a
partition preemption: TERM, then KILL after ``KillWait``), DataLoader workers included. torch's workers die on a
TERM that their parent did not send, and the training process then fails with "DataLoader worker ... is killed by
signal: Terminated" before it can write its preemption checkpoint. The training process decides when to stop
(:class:`pipeline.training.resume.PreemptionHandler`), so workers ignore TERM and USR1 (and INT: a Ctrl-C reaches the whole
process group, and the trainer shuts its workers down itself). torch installs its own worker signal handlers
before calling ``worker_init_fn``, so this must run there, not before the fork.
"""

from __future__ import annotations

import signal

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def ignore_preemption_signals(worker_id: int = 0) -> None:
    """``worker_init_fn`` of every DataLoader: the worker survives TERM/USR1/INT until its parent stops it."""
    for signum in PREEMPTION_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
