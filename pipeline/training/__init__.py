"""Training one cell: its LightningModule and recipe, the fit, checkpoints and resume, monitoring, evaluation.

Belongs here: :mod:`.classifier` (the LightningModule: optimizer, schedule, Mixup/CutMix, EMA), :mod:`.train`
(``train_cell``: data, model, transfer, fit, the run folder), :mod:`.resume` (atomic checkpoints, RNG state, the
preemption and checkpoint policy), :mod:`.monitoring` (throughput, data wait, memory), :mod:`.evaluate` (top-1 of
a trained model with substituted kernels, for the master-key analysis). Does not belong here: sweeps and
schedulers (:mod:`launch`), tables and figures of many cells (:mod:`pipeline.results`), benchmarks
(:mod:`pipeline.bench`). The cell's config schema is :mod:`pipeline.config`.
"""
