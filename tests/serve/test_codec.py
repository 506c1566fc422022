"""The wire codec: openpi's exact byte format, round trips, and strict rejection of unsafe/broken payloads."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from openlbm.serve import codec


def _openpi_actions_message(values: np.ndarray) -> bytes:
    """{"actions": float32 [2, 2]} written byte by byte the way openpi-client's msgpack_numpy.Packer does."""
    data = values.astype("<f4").tobytes()
    return b"".join(
        [
            b"\x81",  # fixmap, 1 entry
            b"\xa7actions",  # fixstr(7)
            b"\x84",  # fixmap, 4 entries: the numpy map
            b"\xc4\x0b__ndarray__",  # bin8(11) key
            b"\xc3",  # true
            b"\xc4\x04data",
            b"\xc4\x10" + data,  # bin8(16): raw C-order bytes
            b"\xc4\x05dtype",
            b"\xa3<f4",  # fixstr(3)
            b"\xc4\x05shape",
            b"\x92\x02\x02",  # fixarray [2, 2]
        ]
    )


def test_encodes_exactly_like_openpi() -> None:
    a = np.array([[1.0, -2.5], [3.25, 4.0]], dtype=np.float32)
    assert codec.packb({"actions": a}) == _openpi_actions_message(a)


def test_decodes_openpi_bytes() -> None:
    a = np.array([[0.5, 1.5], [2.5, -3.5]], dtype=np.float32)
    out = codec.unpackb(_openpi_actions_message(a))
    assert out["actions"].dtype == np.float32
    np.testing.assert_array_equal(out["actions"], a)


def test_npgeneric_format_and_round_trip() -> None:
    packed = codec.packb(np.float32(1.5))
    assert msgpack.unpackb(packed, raw=False) == {b"__npgeneric__": True, b"data": 1.5, b"dtype": "<f4"}
    out = codec.unpackb(packed)
    assert isinstance(out, np.float32) and out == np.float32(1.5)


@pytest.mark.parametrize("dtype", ["uint8", "float32", "float64", "int64", "bool", "float16", ">f4"])
def test_round_trip_dtypes(dtype: str) -> None:
    rng = np.random.default_rng(0)
    a = (rng.random((3, 4, 5)) * 100).astype(dtype)
    obj = {"x": a, "nested": {"list": [a[0], 3, "s"]}, "prompt": "pick up", "flag": True}
    out = codec.unpackb(codec.packb(obj))
    np.testing.assert_array_equal(out["x"], a)
    assert out["x"].dtype == a.dtype and out["x"].shape == a.shape
    np.testing.assert_array_equal(out["nested"]["list"][0], a[0])
    assert out["prompt"] == "pick up" and out["flag"] is True


def test_non_contiguous_arrays_are_written_in_c_order() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4).T  # Fortran-ordered view
    np.testing.assert_array_equal(codec.unpackb(codec.packb(a)), a)


def test_string_keyed_numpy_maps_are_accepted() -> None:
    a = np.arange(6, dtype=np.uint8)
    msg = msgpack.packb({"__ndarray__": True, "data": a.tobytes(), "dtype": "|u1", "shape": [2, 3]})
    np.testing.assert_array_equal(codec.unpackb(msg), a.reshape(2, 3))


def _nd(dtype: str, data: bytes, shape: object) -> bytes:
    return msgpack.packb(
        {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}, use_bin_type=True
    )


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (codec.packb({"a": np.zeros(4, np.float32)})[:-5], "incomplete"),
        (b"\xc1", "invalid msgpack"),
        (codec.packb({"a": 1}) + b"\x01", "trailing bytes"),
        (msgpack.packb(msgpack.ExtType(42, b"payload")), "extension type 42"),
        (_nd("O", b"12345678", [1]), "not allowed"),
        (_nd("V8", b"12345678", [1]), "not allowed"),
        (_nd("<c8", b"12345678", [1]), "not allowed"),
        (_nd("<U2", b"12345678", [1]), "not allowed"),
        (_nd("[('a','<i4')]", b"1234", [1]), "dtype"),
        (_nd("nonsense", b"1234", [1]), "unknown numpy dtype"),
        (_nd("<f4", b"123", [1]), "needs 4 bytes, got 3"),
        (_nd("<f4", b"1234", [-1]), "non-negative"),
        (_nd("<f4", b"1234", [1] * 9), "at most 8"),
        (_nd("<f4", b"1234", "x"), "shape"),
        (msgpack.packb({b"__ndarray__": True, b"dtype": "<f4", b"shape": [1]}), "missing the 'data'"),
        (msgpack.packb({(1, 2): 3}), "invalid msgpack"),
        (msgpack.packb({b"__npgeneric__": True, b"data": "str", b"dtype": "<f4"}), "must be a number"),
        (msgpack.packb({b"__npgeneric__": True, b"data": 300, b"dtype": "|u1"}), "does not fit"),
    ],
)
def test_rejects_bad_payloads_with_codec_error(payload: bytes, match: str) -> None:
    with pytest.raises(codec.CodecError, match=match):
        codec.unpackb(payload)


def test_refuses_to_encode_object_arrays() -> None:
    with pytest.raises(codec.CodecError, match="dtype object"):
        codec.packb({"x": np.array([object()], dtype=object)})
