"""`mkf train`: one cell from its config, in this process: the claim around it (:mod:`.lifecycle`) and, inside a
Slurm step, the step's preemption and restart policy (:mod:`.slurm_task`).

Imports torch only inside :func:`train_config`, after the allocator is tuned.
"""

from __future__ import annotations

from launch.core.console import console, err_console


def train_config(config: str, run_dir: str | None = None, num_nodes: int | None = None, devices: int | None = None,
                 accelerator: str | None = None) -> int:
    """Train the cell of ``config`` (its run dir, nodes, devices per node and accelerator overridden when given)."""
    from pipeline.training.allocator import tune_malloc

    tune_malloc()  # before torch allocates: freed step memory stays in the process (see the module)
    from pipeline.config import load_cell_config
    from pipeline.training.train import train_cell

    cfg = load_cell_config(config)
    if run_dir:
        cfg.run_dir = run_dir
    for key, value in (("num_nodes", num_nodes), ("devices", devices), ("accelerator", accelerator)):
        if value is not None:
            setattr(cfg.trainer, key, value)
    if isinstance(cfg.trainer.devices, int) and cfg.trainer.devices * cfg.trainer.num_nodes > 1:
        cfg.trainer.strategy = "ddp" if cfg.trainer.strategy == "auto" else cfg.trainer.strategy
    from launch.worker import slurm_task
    from launch.worker.lifecycle import run_once

    def train() -> int:
        if slurm_task.in_slurm_step():  # preemption, periodic checkpoints and the restart policy live there
            return slurm_task.train_in_slurm(cfg, report=err_console.print)
        result = train_cell(cfg)
        if result:
            console.print(f"{cfg.run_dir}: top-1 {result['top1']:.4f}, top-5 {result['top5']:.4f}, "
                          f"{result['steps']} steps in {result['wall_time_s']:.1f} s")
        return 0

    # claimed first: a cell of a shared store is trained by one process, whoever else plans it
    return run_once(config, train, run_dir=cfg.run_dir, say=err_console.print)
