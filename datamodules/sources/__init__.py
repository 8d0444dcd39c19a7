"""What a dataset is, before any loader touches it: its files on disk, its classes, and which of them a cell sees.

Belongs here: dataset layouts (:mod:`.layouts`: ImageNet, Food-101, Pets, Flowers-102, CIFAR, Fashion-MNIST, ...
as lists of (file, label) items), Fashion-MNIST's IDX files (:mod:`.fashion_mnist`), class splits
(:mod:`.splits`) and seeded, stratified subsets (:mod:`.subsets`). Does not belong here: writing or reading shards
(:mod:`datamodules.shards`), batches, augmentation and samplers (:mod:`datamodules.loaders`). Imports nothing above
:mod:`datamodules.errors`; torch-free.
"""
