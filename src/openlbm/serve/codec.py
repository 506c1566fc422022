"""msgpack + numpy wire codec, byte-compatible with openpi-client's ``msgpack_numpy``.

openpi encodes a numpy array as an ordinary msgpack *map* (not an ext type) whose keys are msgpack ``bin`` strings::

    {b"__ndarray__": True, b"data": <raw C-order bytes>, b"dtype": "<f4", b"shape": [H, A]}
    {b"__npgeneric__": True, b"data": <python scalar>, b"dtype": "<f4"}          # numpy scalars

We write exactly that (so openpi clients decode our replies) and read it back with ``str`` keys accepted too (other
ports of the protocol use them). Decoding is strict because the bytes come from the network: no ext types, no
pickle, only numeric/bool dtypes, the byte count must equal ``prod(shape) * itemsize``, bounded rank. Anything else
raises :class:`CodecError` with a message that names what was wrong.

Depends only on numpy and msgpack (the client imports it on robots without torch).
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

MAX_NDIM = 8
"""Rank bound on decoded arrays: observations are at most ``[T, H, W, C]``; deeper shapes are rejected."""

_ALLOWED_KINDS = frozenset("biuf")
"""bool, signed/unsigned int, float. Object ("O"), void/structured ("V"), complex, strings and datetimes are refused."""


class CodecError(ValueError):
    """A payload that is not valid openpi-style msgpack (truncated, wrong types, unsafe dtype...)."""


def _encode_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic) and obj.dtype.kind not in _ALLOWED_KINDS:
        raise CodecError(f"cannot encode numpy dtype {obj.dtype} (only bool/int/uint/float)")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise CodecError(f"cannot encode object of type {type(obj).__name__}")


def packb(obj: Any) -> bytes:
    """Encode ``obj`` (dicts/lists/str/numbers/bytes/numpy arrays and scalars) in openpi's format."""
    return msgpack.packb(obj, default=_encode_default, use_bin_type=True)


def _field(obj: dict, name: str) -> Any:
    """Read ``name`` from a map whose keys may be ``bytes`` (openpi) or ``str`` (other encoders)."""
    if name.encode() in obj:
        return obj[name.encode()]
    if name in obj:
        return obj[name]
    raise CodecError(f"numpy map is missing the '{name}' field")


def _parse_dtype(raw: Any) -> np.dtype:
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", errors="replace")
    if not isinstance(raw, str) or len(raw) > 8:
        raise CodecError(f"numpy map has an invalid dtype field {raw!r:.40}")
    try:
        dtype = np.dtype(raw)
    except TypeError as e:
        raise CodecError(f"unknown numpy dtype {raw!r}") from e
    if dtype.kind not in _ALLOWED_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise CodecError(f"numpy dtype {raw!r} is not allowed (only bool/int/uint/float)")
    return dtype


def _decode_ndarray(obj: dict) -> np.ndarray:
    dtype = _parse_dtype(_field(obj, "dtype"))
    data = _field(obj, "data")
    shape = _field(obj, "shape")
    if not isinstance(data, bytes):
        raise CodecError(f"numpy array 'data' must be bytes, got {type(data).__name__}")
    if not isinstance(shape, list | tuple) or len(shape) > MAX_NDIM:
        raise CodecError(f"numpy array 'shape' must be a list of at most {MAX_NDIM} ints, got {shape!r:.60}")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise CodecError(f"numpy array 'shape' must hold non-negative ints, got {shape!r:.60}")
    expected = math.prod(shape) * dtype.itemsize
    if expected != len(data):
        raise CodecError(
            f"numpy array of shape {list(shape)} dtype {dtype.str} needs {expected} bytes, got {len(data)}"
        )
    # Read-only view on the message buffer: no copy until the server stacks the batch.
    return np.frombuffer(data, dtype=dtype).reshape(shape)  # [N] -> shape


def _decode_generic(obj: dict) -> np.generic:
    dtype = _parse_dtype(_field(obj, "dtype"))
    data = _field(obj, "data")
    if not isinstance(data, bool | int | float):
        raise CodecError(f"numpy scalar 'data' must be a number, got {type(data).__name__}")
    try:
        return dtype.type(data)
    except (OverflowError, ValueError) as e:
        raise CodecError(f"numpy scalar {data!r} does not fit dtype {dtype.str}") from e


def _object_hook(obj: dict) -> Any:
    if b"__ndarray__" in obj or "__ndarray__" in obj:
        return _decode_ndarray(obj)
    if b"__npgeneric__" in obj or "__npgeneric__" in obj:
        return _decode_generic(obj)
    return obj


def _reject_ext(code: int, data: bytes) -> Any:
    raise CodecError(f"msgpack extension type {code} is not accepted")


def unpackb(data: bytes | bytearray | memoryview) -> Any:
    """Decode one message. Raises :class:`CodecError` (never a raw msgpack/numpy exception) on bad input."""
    try:
        return msgpack.unpackb(
            data,
            object_hook=_object_hook,
            ext_hook=_reject_ext,
            raw=False,
            strict_map_key=True,
            use_list=True,
        )
    except CodecError:
        raise
    except msgpack.ExtraData as e:
        raise CodecError("msgpack message has trailing bytes after the first object") from e
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as e:
        # Truncated input raises ValueError("Unpack failed: incomplete input"); bad utf-8 a UnicodeDecodeError;
        # unhashable map keys TypeError. All of them mean "not a valid message", said in one sentence.
        detail = f": {e}" if str(e) else ""
        raise CodecError(f"invalid msgpack message ({type(e).__name__}{detail})") from e
