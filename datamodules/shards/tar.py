"""The one tar reader: shard URL -> samples ``{__key__, __url__, ext: bytes}``, with webdataset's key rules.

Training (``datamodules.loaders.wds``), ``mkf data verify`` and ``mkf data index`` (Hub shards) all group tar members
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


def _seekable(stream: Any) -> bool:
    try:
        return bool(stream.seekable())
    except Exception:  # noqa: BLE001 -- pipes and URL streams may not even have the method
        return False


def tar_members(stream: Any, want: Callable[[str], bool] | None = None) -> Iterator[tuple[str, bytes | None]]:
    """(name, bytes) of the regular files of a tar stream: ustar, GNU long names and PAX paths.

    A direct header parser: Python's tarfile spends more time per member than libjpeg-turbo needs to decode a
    small image, which made the tar reader a fifth of the loader's cost. ``want(name)`` False skips a member's
    data -- by seeking on a local file (only its 512-byte header is read), by reading and discarding on a pipe --
    and yields ``(name, None)``: that is how a slot starts mid-shard without reading the samples before it.
    """
    seek = want is not None and _seekable(stream)
    long_name: str | None = None
    while True:
        header = stream.read(512)
        if len(header) < 512 or header == bytes(512):
            if 0 < len(header) < 512:
                raise tarfile.ReadError("truncated tar header")
            return
        size_field = header[124:136].strip(b"\0 ")
        size = int(size_field, 8) if size_field else 0
        kind = header[156:157]
        if kind in (b"L", b"x"):  # GNU long name / PAX header of the next member: small, always read
            data = stream.read(size)
            if len(data) < size:
                raise tarfile.ReadError("truncated tar extended header")
            stream.read(-size % 512)
            if kind == b"L":
                long_name = data.rstrip(bytes(1)).decode()
            else:  # "<len> key=value\n" records
                for record in data.decode(errors="replace").splitlines():
                    key, _, value = record.partition(" ")[2].partition("=")
                    if key == "path":
                        long_name = value
            continue
        regular = kind in (b"0", b"\0", b"7")  # only regular files carry sample members
        name = ""
        if regular:
            if long_name is not None:
                name = long_name
            else:
                name = header[:100].rstrip(bytes(1)).decode()
                prefix = header[345:500].rstrip(bytes(1)).decode() if header[257:262] == b"ustar" else ""
                name = f"{prefix}/{name}" if prefix else name
        long_name = None
        if not regular or (want is not None and not want(name)):
            padded = size + (-size % 512)
            if seek:
                stream.seek(padded, 1)
            else:
                while padded > 0:
                    chunk = stream.read(min(padded, 1 << 20))
                    if not chunk:
                        raise tarfile.ReadError(f"truncated tar member {name}")
                    padded -= len(chunk)
            if regular:
                yield name, None
            continue
        data = stream.read(size)
        if len(data) < size:
            raise tarfile.ReadError(f"truncated tar member {name}")
        stream.read(-size % 512)
        yield name, data


def split_member(name: str) -> tuple[str, str] | None:
    """``dir/a.b.jpg`` -> (``dir/a``, ``b.jpg``); None for names that are not sample members."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot < 0 or name[slash:].startswith("__"):
        return None
    return name[:dot], name[dot + 1:].lower()


def read_samples(url: str, handler: Callable[[Exception], bool] | None = None,
                 select: Callable[[int], bool] | None = None, stop: int | None = None) -> Iterator[dict[str, Any]]:
    """The samples of one shard, in tar order, each with ``__index__``: its ordinal among the shard's samples.

    ``select(ordinal)`` False skips a sample without reading its data (see :func:`tar_members`); reading ends
    before ordinal ``stop`` (a local file is closed there; a pipe is read to its end, since closing a command
    early makes it fail with SIGPIPE). A read error goes to ``handler`` (return True to go on with the next shard:
    the samples read so far are kept); without a handler it is raised.
    """
    from webdataset import gopen

    sample: dict[str, Any] = {}
    ordinal, key_now, keep = -1, None, True

    def want(name: str) -> bool:
        nonlocal ordinal, key_now, keep
        parts = split_member(name)
        if parts is None:
            return False
        if parts[0] != key_now:
            key_now, ordinal = parts[0], ordinal + 1
            keep = (stop is None or ordinal < stop) and (select is None or select(ordinal))
        return keep

    try:
        with gopen(url, "rb") as stream:
            for name, data in tar_members(stream, want):
                parts = split_member(name)
                if parts is None:
                    continue
                key, ext = parts
                if sample and sample["__key__"] != key:
                    yield sample
                    sample = {}
                if stop is not None and ordinal >= stop:
                    if not _seekable(stream):
                        while stream.read(1 << 20):
                            pass
                    break
                if data is None:
                    continue
                if not sample:
                    sample = {"__key__": key, "__url__": url, "__index__": ordinal}
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
