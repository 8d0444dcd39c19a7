"""The one tar reader: shard URL -> samples ``{__key__, __url__, ext: bytes}``, with webdataset's key rules.

Training (``webdataset_loader``), ``mkf data verify`` and ``mkf data index`` (Hub shards) all group tar members
into samples here, so a shard that verifies is read exactly the same way by training. Rules (webdataset's):
a member ``dir/name.ext1.ext2`` belongs to sample ``dir/name`` under extension ``ext1.ext2`` (lower-cased);
consecutive members with the same key form one sample; names without a dot and names starting with ``__`` are
not sample members. URLs are anything webdataset's ``gopen`` opens: paths, http(s), ``pipe:`` commands.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator
from typing import Any

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def tar_members(stream: Any) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the regular files of a tar stream: ustar, GNU long names and PAX paths.

    A direct header parser: Python's tarfile spends more time per member than libjpeg-turbo needs to decode a
    small image, which made the tar reader a fifth of the loader's cost.
    """
    long_name: str | None = None
    while True:
        header = stream.read(512)
        if len(header) < 512 or header == bytes(512):
            if 0 < len(header) < 512:
                raise tarfile.ReadError("truncated tar header")
            return
        size_field = header[124:136].strip(b"\0 ")
        size = int(size_field, 8) if size_field else 0
        data = stream.read(size)
        if len(data) < size:
            raise tarfile.ReadError(f"truncated tar member {header[:100].rstrip(bytes(1)).decode(errors='replace')}")
        stream.read(-size % 512)
        kind = header[156:157]
        if kind == b"L":  # GNU long name of the next member
            long_name = data.rstrip(bytes(1)).decode()
            continue
        if kind == b"x":  # PAX extended header of the next member: "<len> key=value\n" records
            for record in data.decode(errors="replace").splitlines():
                key, _, value = record.partition(" ")[2].partition("=")
                if key == "path":
                    long_name = value
            continue
        if kind not in (b"0", b"\0", b"7"):  # only regular files carry sample members
            long_name = None
            continue
        if long_name is not None:
            name, long_name = long_name, None
        else:
            name = header[:100].rstrip(bytes(1)).decode()
            prefix = header[345:500].rstrip(bytes(1)).decode() if header[257:262] == b"ustar" else ""
            name = f"{prefix}/{name}" if prefix else name
        yield name, data


def split_member(name: str) -> tuple[str, str] | None:
    """``dir/a.b.jpg`` -> (``dir/a``, ``b.jpg``); None for names that are not sample members."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot < 0 or name[slash:].startswith("__"):
        return None
    return name[:dot], name[dot + 1:].lower()


def read_samples(url: str, handler: Callable[[Exception], bool] | None = None) -> Iterator[dict[str, Any]]:
    """The samples of one shard, in tar order. A read error goes to ``handler`` (return True to go on with the
    next shard: the samples read so far are kept); without a handler it is raised."""
    from webdataset import gopen

    sample: dict[str, Any] = {}
    try:
        with gopen(url, "rb") as stream:
            for name, data in tar_members(stream):
                parts = split_member(name)
                if parts is None:
                    continue
                key, ext = parts
                if sample.get("__key__") != key:
                    if sample:
                        yield sample
                    sample = {"__key__": key, "__url__": url}
                sample[ext] = data
    except Exception as exn:  # noqa: BLE001 -- the handler decides
        if handler is None or not handler(exn):
            raise
    if sample:
        yield sample


def sample_label(sample: dict[str, Any]) -> int | None:
    """The integer ``cls`` of a sample, or None when it has none or it is not an integer (a bad sample)."""
    raw = sample.get("cls")
    if raw is None:
        return None
    try:
        return int(raw.decode().strip() if isinstance(raw, bytes) else raw)
    except ValueError:
        return None


def sample_image(sample: dict[str, Any]) -> bytes | None:
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    return None if key is None else sample[key]
