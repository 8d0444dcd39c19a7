"""Variants as data: each entry says where a transfer cell's units come from, how they start and what is trained.

The paper's figure lines (AnB, BnB, AnB+, BnB+), Figure 4's reverse freezing, and the controls its claim needs are
one table here rather than ``if variant == ...`` branches in the planner. A variant is read against a transfer
pair *source -> target*: every variant cell trains on the **target** and is compared with the base model trained
on the target (same arch, same seed).

* ``source``  -- whose weights are copied: ``source`` (the pair's source: a base trained on it, or an external
  source such as ``timm:convnext_tiny.fb_in1k``), ``target`` (a base trained on the target itself: Yosinski's
  BnB self-transfer control) or ``none`` (nothing is copied);
* ``init``    -- ``copy`` the units, ``random`` (keep the cell's own fresh init: the random-frozen control) or
  ``shuffle`` (copy, then permute the filters across channels: the structure survives, the assignment does not);
* ``mode``    -- ``frozen`` or ``finetune`` (the ``+`` variants);
* ``direction`` -- ``first`` (units 1..n) or ``last`` (units n..L: Figure 4's reverse freezing);
* ``depthless`` -- a cell with no transfer depth (one per arch, target and seed), e.g. a depthwise init scheme;
* ``model_init`` -- a ``model.init`` section for the cell (the filter-analysis inits: DoG, master key, random k).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from datamodules.errors import UserError

SourceRole = Literal["source", "target", "none"]


@dataclass(frozen=True)
class Variant:
    name: str
    source: SourceRole
    init: Literal["copy", "random", "shuffle"] = "copy"
    mode: Literal["frozen", "finetune"] = "frozen"
    direction: Literal["first", "last"] = "first"
    depthless: bool = False
    model_init: dict[str, Any] | None = None
    doc: str = ""

    @property
    def needs_source(self) -> bool:
        """Whether the cell copies units from a trained model (and so waits for it)."""
        return self.source != "none"


_ENTRIES = [
    Variant("AnB", "source", doc="first n units from the source model, frozen"),
    Variant("BnB", "target", doc="first n units from the target's own base model, frozen (self-transfer control)"),
    Variant("AnB+", "source", mode="finetune", doc="first n units from the source model, then fine-tuned"),
    Variant("BnB+", "target", mode="finetune", doc="first n units from the target's base, then fine-tuned"),
    Variant("reverse", "source", direction="last", doc="units n..L from the source model, frozen (Figure 4)"),
    Variant("random-frozen", "none", init="random",
            doc="first n units keep the cell's fresh random init (its seed) and are frozen: no transfer"),
    Variant("shuffled", "source", init="shuffle",
            doc="first n units from the source, filters permuted across channels (seeded), frozen"),
    Variant("dog", "none", depthless=True, model_init={"kind": "dog"},
            doc="no transfer; depthwise kernels initialised as difference-of-Gaussians (model.init)"),
    Variant("masterkey", "none", depthless=True, model_init={"kind": "masterkey"},
            doc="no transfer; depthwise kernels set from the 8 published master key filters, frozen"),
    Variant("random_k", "none", depthless=True, model_init={"kind": "random_k"},
            doc="no transfer; depthwise kernels from k random filters, frozen (the masterkey control)"),
]
VARIANTS: dict[str, Variant] = {v.name: v for v in _ENTRIES}
CLASSIC = ("AnB", "BnB", "AnB+", "BnB+", "reverse")  # the paper's Figure 3/4 lines


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise UserError(f"unknown variant {name!r}; use any of {', '.join(VARIANTS)}") from None
