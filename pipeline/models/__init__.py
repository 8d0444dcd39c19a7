"""The model zoo and its transfer units: what a network is, which of its layers are units, and its weight files.

Belongs here: creating any timm architecture by name (:mod:`.zoo`, which also registers HorNet and the CPU-sized
demo variants with timm), the architectures this project defines (:mod:`.hornet`, :mod:`.demo`), the forward-order
plan of a model's transfer units (:mod:`.layer_plan`), the torch-free table of unit counts that the planner reads
(:mod:`.unit_counts`), and saving/loading plain timm state dicts (:mod:`.weights`).
Does not belong here: copying or freezing units between models (:mod:`pipeline.transfer`), training
(:mod:`pipeline.training`). This ``__init__`` imports nothing, so torch-free code may import :mod:`.unit_counts`.
"""
