"""What `mkf layers` prints: a model's transfer units in forward order, or how one architecture's units map onto
another's (``--map``). Presentation only: the unit plans are :mod:`pipeline.models.layer_plan`, the mapping
policy :mod:`pipeline.transfer.mapping`.
"""

from __future__ import annotations

import argparse

from rich.table import Table

from datamodules.errors import UserError
from launch.core.console import console


def print_layers(args: argparse.Namespace) -> int:
    """`mkf layers ARCH`: the transfer units of any timm model in forward order (or, with --map, a mapping)."""
    from pipeline.models.layer_plan import plan_units
    from pipeline.models.zoo import create_model

    if args.map:
        return print_mapping(args)
    if not args.arch:
        raise UserError("mkf layers needs ARCH (e.g. convnext_tiny), or --map SRC_ARCH DST_ARCH")
    model = create_model(args.arch, num_classes=args.num_classes)
    units = plan_units(model, args.kind)
    if not units:
        raise UserError(f"{args.arch} has no {args.kind} units; try --kind block or --kind pointwise")
    table = Table(title=f"{args.arch}: {len(units)} {args.kind} units (forward order)")
    for col in ("#", "modules", "shape", "params"):
        table.add_column(col, justify="right" if col in ("#", "params") else "left")
    for u in units:
        table.add_row(str(u.index), "\n".join(u.modules) if args.kind in ("block", "both") and args.verbose
                      else (u.modules[0] + (f" (+{len(u.modules) - 1})" if len(u.modules) > 1 else "")),
                      u.shape, f"{u.num_params:,}")
    console.print(table)
    console.print(f"{len(units)} units")
    return 0


def print_mapping(args: argparse.Namespace) -> int:
    """`mkf layers --map SRC DST`: which source unit, channels and kernel feed each target unit."""
    from pipeline.models.layer_plan import plan_units
    from pipeline.models.zoo import create_model
    from pipeline.transfer.mapping import MappingPolicy, mapping_table

    src_arch, dst_arch = args.map
    if args.arch:
        raise UserError("give either ARCH or --map SRC_ARCH DST_ARCH, not both")
    policy = MappingPolicy(units=args.units, channels=args.channels, kernel=args.kernel, seed=args.seed)
    src, dst = create_model(src_arch, num_classes=args.num_classes), create_model(dst_arch, num_classes=args.num_classes)
    src_units, dst_units = plan_units(src, args.kind), plan_units(dst, args.kind)
    for arch, units in ((src_arch, src_units), (dst_arch, dst_units)):
        if not units:
            raise UserError(f"{arch} has no {args.kind} units; choose another --kind")
    rows = mapping_table(policy, src, src_units, dst, dst_units)
    table = Table(title=f"{src_arch} -> {dst_arch}: {args.kind} units, units {policy.units}, channels "
                        f"{policy.channels}, kernel {policy.kernel}, seed {policy.seed}")
    for col in ("target", "source", "target shape", "source shape", "action"):
        table.add_column(col, justify="right" if col in ("target", "source") else "left")
    for row, _ in rows:
        table.add_row(str(row.target), str(row.source or "-"), row.target_shape, row.source_shape,
                      "; ".join(row.actions))
    console.print(table)
    console.print(f"{len(dst_units)} target units from {len(src_units)} source units")
    return 0
