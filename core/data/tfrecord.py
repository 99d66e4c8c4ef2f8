"""TFRecord framing and ``tf.train.Example`` decoding/encoding without TensorFlow.

A TFRecord file is a sequence of records::

    uint64 length (little endian) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)

``masked_crc32c(x) = ((crc >> 15) | (crc << 17)) + 0xa282ead8`` (mod 2**32), CRC-32C (Castagnoli).

``data`` is a serialised ``tf.train.Example`` protobuf; only the few messages involved are decoded::

    Example  { Features features = 1; }
    Features { map<string, Feature> feature = 1; }        # map entry: key = 1, value = 2
    Feature  { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }  FloatList { repeated float value = 1 [packed]; }
    Int64List { repeated int64 value = 1 [packed]; }

Decoded features are ``{name: list[bytes] | list[float] | list[int]}``.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np


class TFRecordError(ValueError):
    """A TFRecord file or an Example inside it is corrupt; the message says where."""


# -- CRC-32C ------------------------------------------------------------------------------------
def _make_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _make_table()


def crc32c(data: bytes) -> int:
    """CRC-32C of ``data`` (pure Python; about 10 MB/s)."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# -- framing ------------------------------------------------------------------------------------
def read_records(path: str | Path, verify_crc: bool = True) -> Iterator[bytes]:
    """Yield the raw records of a TFRecord file.

    The length CRC is always checked; ``verify_crc`` also checks each record's data CRC (pure
    Python, slow on gigabytes: pass False to skip). A truncated or corrupt frame raises
    `TFRecordError` (the framing cannot be resynchronised after it).
    """
    path = Path(path)
    with open(path, "rb") as fh:
        index = 0
        while True:
            header = fh.read(12)
            if not header:
                return
            if len(header) < 12:
                raise TFRecordError(f"{path}: record {index}: truncated header ({len(header)} of 12 bytes)")
            (length,) = struct.unpack("<Q", header[:8])
            (len_crc,) = struct.unpack("<I", header[8:])
            if masked_crc32c(header[:8]) != len_crc:
                raise TFRecordError(f"{path}: record {index}: length CRC mismatch (corrupt file?)")
            data = fh.read(length)
            footer = fh.read(4)
            if len(data) < length or len(footer) < 4:
                raise TFRecordError(f"{path}: record {index}: truncated data ({len(data)} of {length} bytes)")
            if verify_crc and masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                raise TFRecordError(f"{path}: record {index}: data CRC mismatch (corrupt record)")
            yield data
            index += 1


def write_records(path: str | Path, records: Sequence[bytes]) -> None:
    """Write raw records as a TFRecord file (used by tests and converters)."""
    with open(path, "wb") as fh:
        for data in records:
            length = struct.pack("<Q", len(data))
            fh.write(length + struct.pack("<I", masked_crc32c(length)) + data
                     + struct.pack("<I", masked_crc32c(data)))


# -- protobuf wire format -----------------------------------------------------------------------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise TFRecordError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise TFRecordError("varint too long")


def _fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    """Yield (field_number, wire_type, value) of a protobuf message; value is int or bytes."""
    pos = 0
    n = len(buf)
    while pos < n:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > n:
                raise TFRecordError("truncated fixed64")
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > n:
                raise TFRecordError("truncated length-delimited field")
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            if pos + 4 > n:
                raise TFRecordError("truncated fixed32")
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise TFRecordError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _decode_feature(buf: bytes) -> list:
    for number, wire, value in _fields(buf):
        if number == 1:  # BytesList
            return [v for num, w, v in _fields(value) if num == 1 and w == 2]
        if number == 2:  # FloatList (packed or not)
            out: list[float] = []
            for num, w, v in _fields(value):
                if num != 1:
                    continue
                if w == 2:
                    if len(v) % 4:
                        raise TFRecordError("packed float list length is not a multiple of 4")
                    out.extend(np.frombuffer(v, dtype="<f4").tolist())
                elif w == 5:
                    out.append(struct.unpack("<f", v)[0])
            return out
        if number == 3:  # Int64List (packed or not)
            out_i: list[int] = []
            for num, w, v in _fields(value):
                if num != 1:
                    continue
                if w == 2:
                    pos = 0
                    while pos < len(v):
                        x, pos = _varint(v, pos)
                        out_i.append(_signed64(x))
                elif w == 0:
                    out_i.append(_signed64(v))
            return out_i
    return []


def parse_example(data: bytes) -> dict[str, list]:
    """Decode a serialised ``tf.train.Example`` into ``{name: list of values}``."""
    features: dict[str, list] = {}
    for number, wire, value in _fields(data):
        if number != 1 or wire != 2:
            continue
        for fnum, fwire, entry in _fields(value):
            if fnum != 1 or fwire != 2:
                continue
            key, feature = None, b""
            for enum, ewire, ev in _fields(entry):
                if enum == 1 and ewire == 2:
                    try:
                        key = ev.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise TFRecordError(f"feature name is not UTF-8: {ev[:40]!r}") from exc
                elif enum == 2 and ewire == 2:
                    feature = ev
            if key is None:
                raise TFRecordError("feature map entry without a name")
            features[key] = _decode_feature(feature)
    return features


def _enc_varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _enc_len(number: int, payload: bytes) -> bytes:
    return _enc_varint((number << 3) | 2) + _enc_varint(len(payload)) + payload


def encode_example(features: Mapping[str, object]) -> bytes:
    """Serialise ``{name: value}`` as a ``tf.train.Example``.

    bytes/str (or a list of them) -> BytesList; float (or list of floats) -> FloatList;
    int/bool (or list of ints) -> Int64List.
    """
    entries = b""
    for key, value in features.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if all(isinstance(v, (bytes, str)) for v in values):
            payload = b"".join(_enc_len(1, v.encode("utf-8") if isinstance(v, str) else v) for v in values)
            feature = _enc_len(1, payload)
        elif all(isinstance(v, (int, bool, np.integer)) and not isinstance(v, float) for v in values):
            feature = _enc_len(3, _enc_len(1, b"".join(_enc_varint(int(v)) for v in values)))
        elif all(isinstance(v, (int, float, np.floating, np.integer)) for v in values):
            feature = _enc_len(2, _enc_len(1, np.asarray(values, dtype="<f4").tobytes()))
        else:
            raise ValueError(f"feature {key!r}: cannot encode values of types {sorted({type(v).__name__ for v in values})}")
        entries += _enc_len(1, _enc_len(1, key.encode("utf-8")) + _enc_len(2, feature))
    return _enc_len(1, entries)
