"""The fault-injection harness of tests/test_faults.py (issue 23): black-box scenarios on the test cluster.

- harness.py: the test cluster (slurm/testcluster), scenarios that drive ``python -m launch.cli``, Slurm's commands,
  files and signals, the ledger, uninterrupted reference runs, the invariants (i)-(v) and the table;
- rows.py: the rows, one fault at one lifecycle transition each;
- inject/: ``sitecustomize`` + ``mkf_fault_hooks``, put on PYTHONPATH after the code under test in a scenario's
  processes (and its Slurm jobs): slow fsync of a checkpoint temp file, long validation, slow training steps, a
  sticky device error, and the ledger of who trained which run folder when;
- bin/: ``sbatch`` and ``scontrol`` as a faulty cluster answers them (first on PATH), ``python-ranks``;
- claim_adapter.py: the one call into the project's Python API (no command runs just a rank's claim).

Nothing here imports ``launch``: the harness runs unchanged against the code before and after its rebuild.
"""
