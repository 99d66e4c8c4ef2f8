"""TFRecord framing and ``tf.train.Example`` decoding/encoding without TensorFlow.

A TFRecord file is a sequence of records::

    uint64 length (little endian) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)

``masked_crc32c(x) = ((crc >> 15) | (crc << 17)) + 0xa282ead8`` (mod 2**32), CRC-32C (Castagnoli).
The whole stream may be GZIP- or ZLIB-compressed (TensorFlow's ``compression_type``); readers
tell the three apart by their first bytes, whatever the file is called.

``data`` is a serialised ``tf.train.Example`` protobuf; only the few messages involved are decoded::

    Example  { Features features = 1; }
    Features { map<string, Feature> feature = 1; }        # map entry: key = 1, value = 2
    Feature  { oneof { BytesList bytes_list = 1; FloatList float_list = 2; Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }  FloatList { repeated float value = 1 [packed]; }
    Int64List { repeated int64 value = 1 [packed]; }

Decoded features are ``{name: list[bytes] | list[float] | list[int]}``.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator, Mapping, Sequence

import numpy as np


class TFRecordError(ValueError):
    """A TFRecord file or an Example inside it is corrupt; the message says where."""


class LFSPointerError(TFRecordError):
    """The file is a Git LFS pointer (a few lines of text), not the data it points to."""


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


def crc32c_python(data: bytes) -> int:
    """CRC-32C of ``data`` in pure Python (the fallback: about 7-10 MB/s)."""
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _fast_crc32c():
    """A compiled CRC-32C from an optional package, or None: ``(name, function)``."""
    try:
        import google_crc32c

        if getattr(google_crc32c, "implementation", "c") == "c":  # its own fallback is pure Python
            return "google-crc32c", google_crc32c.value
    except ImportError:
        pass
    try:
        import crc32c as _crc32c_pkg

        return "crc32c", _crc32c_pkg.crc32c
    except ImportError:
        pass
    return None


_FAST = _fast_crc32c()
#: which CRC-32C implementation `crc32c` uses: ``google-crc32c``, ``crc32c`` or ``python``.
CRC32C_BACKEND = _FAST[0] if _FAST else "python"
_crc32c_impl = _FAST[1] if _FAST else crc32c_python


def crc32c(data: bytes) -> int:
    """CRC-32C of ``data``: compiled (GB/s) when ``google-crc32c`` or ``crc32c`` is installed,
    else pure Python (`crc32c_python`). `CRC32C_BACKEND` names the one in use."""
    return _crc32c_impl(bytes(data))


def masked_crc32c(data: bytes) -> int:
    crc = _crc32c_impl(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# -- compression and pointer files ----------------------------------------------------------------
_LFS_MAGIC = b"version https://git-lfs.github.com/spec/"
COMPRESSIONS = ("none", "gzip", "zlib")


def _is_zlib_header(head: bytes) -> bool:
    # RFC 1950: CM = 8 (deflate), window <= 32K, FCHECK makes the first two bytes a multiple of 31
    return len(head) >= 2 and head[0] & 0x0F == 8 and head[0] >> 4 <= 7 and (head[0] << 8 | head[1]) % 31 == 0


def lfs_pointer_message(path: Path, text: bytes) -> str:
    """What a Git LFS pointer file is and how to fetch the data it stands for."""
    fields = dict(line.split(" ", 1) for line in text.decode("utf-8", "replace").splitlines() if " " in line)
    size = fields.get("size", "?")
    return (f"{path} is a Git LFS pointer file ({len(text)} bytes of text standing for a {size}-byte file, "
            f"{fields.get('oid', 'no oid')}), not the data: the repository was cloned without Git LFS. "
            "Fetch the real file: in that clone run `git lfs install && git lfs pull` "
            "(or `git lfs pull --include <file>`), or download it with `hf download <repo> <file> --repo-type dataset` "
            "for a Hugging Face copy, or with the 'Download raw file' button on the repository's web page")


def sniff_tfrecord(path: str | Path) -> str | None:
    """What ``path`` holds, from its first bytes: ``"none"`` (a plain TFRecord whose first length
    CRC checks), ``"gzip"``, ``"zlib"``, ``"lfs-pointer"``, ``"empty"``, or None (none of these)."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if not head:
        return "empty"
    if len(head) >= 12 and masked_crc32c(head[:8]) == struct.unpack("<I", head[8:12])[0]:
        return "none"  # checked first: a length's low bytes can look like a zlib header
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if _is_zlib_header(head):
        return "zlib"
    if head.startswith(_LFS_MAGIC):
        return "lfs-pointer"
    return None


class _ZlibReader(io.RawIOBase):
    """A read-only stream inflating a ZLIB-compressed file chunk by chunk (bounded memory)."""

    def __init__(self, fh: BinaryIO):
        self._fh = fh
        self._inflate = zlib.decompressobj()
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while True:
            if not self._pending:
                if self._inflate.eof:
                    return 0
                chunk = self._fh.read(1 << 16)
                if not chunk:
                    raise EOFError("compressed file ended before the end-of-stream marker was reached")
                self._pending = chunk
            out = self._inflate.decompress(self._pending, len(buf))
            self._pending = self._inflate.unconsumed_tail
            if out:
                buf[:len(out)] = out
                return len(out)


def open_tfrecord(path: str | Path, compression: str = "auto") -> tuple[BinaryIO, str]:
    """Open a TFRecord file for reading, decompressing it on the fly: ``(stream, compression)``.

    ``compression="auto"`` tells plain, GZIP and ZLIB files apart by their first bytes. A Git
    LFS pointer file raises `LFSPointerError` saying how to fetch the data.
    """
    path = Path(path)
    kind = sniff_tfrecord(path)
    if kind == "lfs-pointer":
        raise LFSPointerError(lfs_pointer_message(path, path.read_bytes()[:1024]))
    if compression == "auto":
        compression = kind if kind in COMPRESSIONS else "none"
    elif compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; use 'auto' or one of {list(COMPRESSIONS)}")
    fh = open(path, "rb")
    if compression == "gzip":
        return gzip.GzipFile(fileobj=fh, mode="rb"), compression
    if compression == "zlib":
        return io.BufferedReader(_ZlibReader(fh), buffer_size=1 << 16), compression
    return fh, compression


# -- framing ------------------------------------------------------------------------------------
def read_records(path: str | Path, verify_crc: bool = True, compression: str = "auto") -> Iterator[bytes]:
    """Yield the raw records of a TFRecord file (plain, GZIP or ZLIB; see `open_tfrecord`).

    The length CRC is always checked; ``verify_crc`` also checks each record's data CRC (fast
    with ``google-crc32c`` installed; pass False to skip it). A truncated or corrupt frame raises
    `TFRecordError` (the framing cannot be resynchronised after it); so does a damaged
    compressed stream, and a Git LFS pointer file raises `LFSPointerError`.
    """
    path = Path(path)
    fh, compression = open_tfrecord(path, compression)
    what = "" if compression == "none" else f" ({compression}-compressed)"
    index = 0
    with fh:
        while True:
            try:
                header = fh.read(12)
                if not header:
                    return
                if len(header) < 12:
                    raise TFRecordError(f"{path}{what}: record {index}: truncated header ({len(header)} of 12 bytes)")
                (length,) = struct.unpack("<Q", header[:8])
                (len_crc,) = struct.unpack("<I", header[8:])
                if masked_crc32c(header[:8]) != len_crc:
                    hint = ""
                    if index == 0 and compression == "none":
                        hint = " - the file starts with neither a TFRecord frame nor a GZIP/ZLIB header: is it a TFRecord file?"
                    raise TFRecordError(f"{path}{what}: record {index}: length CRC mismatch (corrupt file?){hint}")
                data = fh.read(length)
                footer = fh.read(4)
            except (EOFError, OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
                raise TFRecordError(f"{path}{what}: record {index}: the compressed stream is damaged ({exc})") from exc
            if len(data) < length or len(footer) < 4:
                raise TFRecordError(f"{path}{what}: record {index}: truncated data ({len(data)} of {length} bytes)")
            if verify_crc and masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                raise TFRecordError(f"{path}{what}: record {index}: data CRC mismatch (corrupt record)")
            yield data
            index += 1


def write_records(path: str | Path, records: Sequence[bytes], compression: str = "none") -> None:
    """Write raw records as a TFRecord file, optionally GZIP/ZLIB-compressed (tests and converters)."""
    frames = b"".join(
        struct.pack("<Q", len(data)) + struct.pack("<I", masked_crc32c(struct.pack("<Q", len(data))))
        + data + struct.pack("<I", masked_crc32c(data)) for data in records)
    if compression == "gzip":
        frames = gzip.compress(frames)
    elif compression == "zlib":
        frames = zlib.compress(frames)
    elif compression != "none":
        raise ValueError(f"unknown compression {compression!r}; use one of {list(COMPRESSIONS)}")
    Path(path).write_bytes(frames)


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
