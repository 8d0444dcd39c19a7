"""What the user reads: tables, status, reports and dashboards, built from plans, states and results.

Belongs here: :mod:`.plan` (`mkf sweep plan`: cells, cost, schedule), :mod:`.schedule` (each arch's effective LR,
steps and EMA horizon), :mod:`.status` (`mkf sweep status`), :mod:`.audit` (`mkf sweep audit`), :mod:`.report`
(`mkf report`: tables and figure), :mod:`.dashboard` (the sweep's W&B workspace), :mod:`.wandb_sync` (uploading
offline W&B runs; the report's W&B run) and :mod:`.layers` (`mkf layers`). Presentation only: what is computed
lives in :mod:`launch.planning`, :mod:`launch.store`, :mod:`launch.execution` and :mod:`pipeline.results`.
:mod:`.plan`, :mod:`.status`, :mod:`.schedule`, :mod:`.audit` and :mod:`.dashboard` are login-node commands: they
never import torch, Lightning or timm.
"""
