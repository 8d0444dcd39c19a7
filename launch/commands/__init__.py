"""The ``mkf`` verbs: one function per verb, holding no work of its own, only the call into the room that does it
(:mod:`launch.planning`, :mod:`launch.execution`, :mod:`launch.worker`, :mod:`launch.views`, :mod:`datamodules`,
:mod:`pipeline`).

:mod:`.sweep` (``mkf sweep ...``), :mod:`.train`, :mod:`.report`, :mod:`.demo`, :mod:`.layers` and :mod:`.bench`,
whose arguments :mod:`launch.cli` parses; :mod:`.data` (``mkf data``, ``mkf bench loader``), :mod:`.filters`
(``mkf filters``) and :mod:`.gpu_bench` (``mkf bench gpu``) bring their own parsers. Every module is torch-free at
import and imports the room it calls inside the verb, so ``mkf --help`` loads nothing heavy.
"""
