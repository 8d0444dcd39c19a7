"""Filter analysis of depthwise kernels: extraction, Figure-1 grids, DoG clustering, master-key filters, the
DoG / master-key / random-K initialisations of the depthwise units, and the filter panels of a cell's dashboard.

Every part reads kernels through :func:`pipeline.models.layer_plan.plan_units` (kind ``depthwise``), so "unit i"
means the same layer here, in transfer cells and in ``mkf layers``. Sits above :mod:`pipeline.models` and
:mod:`pipeline.transfer` and below :mod:`pipeline.training` (which initialises kernels and logs filter grids from
here); evaluating a model with substituted kernels needs training code and lives in
:mod:`pipeline.training.evaluate`.
"""
