"""Filter analysis of depthwise kernels: extraction, Figure-1 grids, DoG clustering, master-key filters, and the
DoG / master-key / random-K initialisations of the depthwise units.

Every part reads kernels through :func:`pipeline.layer_plan.plan_units` (kind ``depthwise``), so "unit i" means the
same layer here, in transfer cells and in ``mkf layers``.
"""
