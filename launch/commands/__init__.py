"""Argument parsers and handlers of the ``mkf`` sub-commands that live outside :mod:`launch.cli`: ``mkf data``
(:mod:`.data`), ``mkf filters`` (:mod:`.filters`) and ``mkf bench gpu`` (:mod:`.gpu_bench`). They parse and call
into :mod:`datamodules` and :mod:`pipeline`; they never hold the work themselves.
"""
