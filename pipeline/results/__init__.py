"""What runs leave behind, read back: a run folder's files and states, a sweep's tables and its figures.

Belongs here: :mod:`.run_folder` (the torch-free run-directory API every login-node command uses),
:mod:`.tables` (results.csv, summary.csv, relative top-1, confidence intervals), :mod:`.figures` (the figure of
each report kind) and :mod:`.report` (tables + figure of a sweep). Costs and cheaper schedules (docs/costs.md):
:mod:`.costs` (a cell's cost record summed, the cost model, the table refitted from cells), :mod:`.cost_sources`
(the shipped table's published figures and rules), :mod:`.calibration` (is a short budget faithful?) and
:mod:`.sequential` (a seed more only while a comparison is undecided). Imports run one way: run_folder and tables
know nothing of figures; figures use tables; report uses both. Torch-free: nothing here imports torch, Lightning
or timm.
"""
