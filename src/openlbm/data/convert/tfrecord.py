"""TFRecord files and ``tf.train.Example`` records, read without TensorFlow.

A TFRecord file is a sequence of records, each framed as::

    uint64 length | uint32 masked_crc32c(length) | byte data[length] | uint32 masked_crc32c(data)

(little-endian; ``masked(c) = ((c >> 15) | (c << 17)) + 0xA282EAD8`` mod 2**32). Both checksums are verified.
The CRC32C comes from ``google-crc32c`` (Google's C implementation; pure-Python fallback) and the ``Example``
protobuf is decoded by the ``protobuf`` runtime from a descriptor built here from TensorFlow's
``tensorflow/core/example/{feature,example}.proto`` (six small messages). Building the descriptor at run time, in a
private pool, needs no generated ``*_pb2.py`` (which pins a protoc/runtime version pair), no TensorFlow or
TensorBoard import, and cannot clash with TensorFlow's own ``tensorflow.Example`` if both live in one process.
Both packages are the optional extra ``openlbm[convert]``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from openlbm.data.convert.source import SourceError

_HEADER = struct.Struct("<QI")  # length, masked crc of the length
_FOOTER = struct.Struct("<I")  # masked crc of the data
_MASK_DELTA = 0xA282EAD8
_INSTALL_HINT = "reading RLDS/TFRecord needs protobuf and google-crc32c: pip install 'openlbm[convert]'"


def _crc32c(data: bytes) -> int:
    try:
        import google_crc32c
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    return google_crc32c.value(data)


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C of ``data``."""
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _read_header(f: Any, path: Path, index: int, size: int) -> int | None:
    """Length of record ``index`` at the current position, or None at a clean end of file."""
    start = f.tell()
    head = f.read(_HEADER.size)
    if not head:
        return None
    if len(head) < _HEADER.size:
        raise SourceError(f"{path.name}: record {index}: truncated header at byte {start} (file ends)")
    length, crc = _HEADER.unpack(head)
    if masked_crc32c(head[:8]) != crc:
        raise SourceError(f"{path.name}: record {index}: length CRC mismatch at byte {start} (corrupted file)")
    if start + _HEADER.size + length + _FOOTER.size > size:
        raise SourceError(
            f"{path.name}: record {index}: truncated record ({length} bytes announced at byte {start}, "
            f"file has {size})"
        )
    return length


def _read_body(f: Any, path: Path, index: int, length: int) -> bytes:
    data = f.read(length)
    (crc,) = _FOOTER.unpack(f.read(_FOOTER.size))
    if masked_crc32c(data) != crc:
        raise SourceError(f"{path.name}: record {index}: data CRC mismatch (corrupted record)")
    return data


def iter_records(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(index, data)`` of every record of a TFRecord file, checksums verified, one record in memory at a time."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        index = 0
        while (length := _read_header(f, path, index, size)) is not None:
            yield index, _read_body(f, path, index, length)
            index += 1


def record_offsets(path: Path) -> list[int]:
    """Byte offset of every record (headers read and verified, data skipped): random access without a full read."""
    path = Path(path)
    size = path.stat().st_size
    offsets: list[int] = []
    with open(path, "rb") as f:
        while True:
            pos = f.tell()
            length = _read_header(f, path, len(offsets), size)
            if length is None:
                return offsets
            offsets.append(pos)
            f.seek(length + _FOOTER.size, 1)


def read_record(path: Path, offset: int, index: int) -> bytes:
    """The data of record ``index`` starting at byte ``offset`` (from :func:`record_offsets`), checksums verified."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(offset)
        length = _read_header(f, path, index, size)
        if length is None:
            raise SourceError(f"{path.name}: record {index}: missing (file ends at byte {offset})")
        return _read_body(f, path, index, length)


@cache
def _example_class() -> type:
    """The ``tensorflow.Example`` message class, from a descriptor equivalent to TensorFlow's .proto files."""
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    except ImportError as e:
        raise ImportError(_INSTALL_HINT) from e
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="openlbm/tf_example.proto", package="tensorflow", syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, int, str | None, int | None]) -> Any:
        msg = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name, oneof in fields:
            field = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name
            if oneof is not None:
                field.oneof_index = oneof
        return msg

    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    message("BytesList", ("value", 1, F.TYPE_BYTES, rep, None, None))
    message("FloatList", ("value", 1, F.TYPE_FLOAT, rep, None, None))  # packed by default in proto3
    message("Int64List", ("value", 1, F.TYPE_INT64, rep, None, None))
    feature = message(
        "Feature",
        ("bytes_list", 1, F.TYPE_MESSAGE, opt, ".tensorflow.BytesList", 0),
        ("float_list", 2, F.TYPE_MESSAGE, opt, ".tensorflow.FloatList", 0),
        ("int64_list", 3, F.TYPE_MESSAGE, opt, ".tensorflow.Int64List", 0),
    )
    feature.oneof_decl.add(name="kind")
    features = message("Features", ("feature", 1, F.TYPE_MESSAGE, rep, ".tensorflow.Features.FeatureEntry", None))
    entry = features.nested_type.add(name="FeatureEntry")  # map<string, Feature> is a repeated map-entry message
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=opt, type_name=".tensorflow.Feature")
    message("Example", ("features", 1, F.TYPE_MESSAGE, opt, ".tensorflow.Features", None))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


Value = np.ndarray | list[bytes]
"""One feature of an Example: float32 or int64 array (flat), or the list of byte strings."""


def parse_example(data: bytes, where: str) -> dict[str, Value]:
    """Decode a serialized ``tf.train.Example`` into ``{key: flat values}``. ``where`` prefixes error messages."""
    from google.protobuf.message import DecodeError

    example = _example_class()()
    try:
        example.ParseFromString(data)
    except DecodeError as e:
        raise SourceError(f"{where}: not a tf.train.Example ({e})") from None
    out: dict[str, Value] = {}
    for key, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "float_list":
            out[key] = np.asarray(feature.float_list.value, dtype=np.float32)
        elif kind == "int64_list":
            out[key] = np.asarray(feature.int64_list.value, dtype=np.int64)
        elif kind == "bytes_list":
            out[key] = list(feature.bytes_list.value)
        else:  # an empty Feature (TFDS writes none, but the format allows it)
            out[key] = np.zeros(0, dtype=np.float32)
    return out
