"""Batches for training: the LightningDataModules of every storage format and the epoch contract they all keep.

Belongs here: the class-split base (:mod:`.base`), the seeded samplers and resume position (:mod:`.samplers`), the
one augmentation contract (:mod:`.augment`), loader-worker set-up (:mod:`.workers`) and one module per format:
in-memory Fashion-MNIST / MNIST (:mod:`.memory`), image folders (:mod:`.folder`), webdataset shards (:mod:`.wds`),
FFCV files (:mod:`.ffcv`). Does not belong here: where datasets live (:mod:`datamodules.sources`) or how shards
are written (:mod:`datamodules.shards`), both of which this room may import. Pick a loader with
:func:`datamodules.build_datamodule`.
"""
