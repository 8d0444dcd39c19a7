"""Shards on disk: writing webdataset tar / FFCV files from a source, their ``index.json``, verifying them, and
the one tar reader that training, verification and Hub indexing share.

Belongs here: :mod:`.writer` (``mkf data write`` and the index format), :mod:`.verify` (``mkf data verify``),
:mod:`.hub_index` (``mkf data index`` for third-party shards), :mod:`.tar` (tar members -> samples). Does not
belong here: turning samples into training batches (:mod:`datamodules.loaders`). May import
:mod:`datamodules.sources`, never :mod:`datamodules.loaders`.
"""
