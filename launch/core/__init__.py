"""The launcher's vocabulary: plain data that every room of :mod:`launch` shares. Torch-free.

Belongs here: :mod:`.plan` (a cell, the sweep plan, its manifest, and the cell configs written from it),
:mod:`.variants` (the table of transfer variants), :mod:`.exits` (the exit statuses the submit side and the worker
side agree on) and :mod:`.console` (the two consoles every command prints to). Does not belong here: deciding what
to train (:mod:`launch.planning`), running it (:mod:`launch.execution`, :mod:`launch.worker`) or showing it
(:mod:`launch.views`). Imports nothing else of :mod:`launch`.
"""
