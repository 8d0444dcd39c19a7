"""Transfer between models: which units are copied, frozen, re-initialised or shuffled, and how the units of one
architecture map onto another's.

Belongs here: :mod:`.apply` (the transfer spec and the init modes copy | random | shuffle, applied to a fresh
model) and :mod:`.mapping` (the cross-architecture policy: units, channels, kernels). Does not belong here: the
models and their unit plans (:mod:`pipeline.models`, imported from here) or training (:mod:`pipeline.training`).
"""
