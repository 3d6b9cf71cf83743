"""A record's meta region (docs/messages.md §1-2): its key and headers, and
the not-before time of a delayed record.  Without headers or a delay a
record's prefix is its bare key, as before.

    [i64 not_before_ns (delayed only)][u16 key_len][key][u16 n] n x ([u8 name_len][name (UTF-8)][u8 kind][u32 len][value])

kind 0 = str (UTF-8), 1 = bytes; integers little-endian.  Limits: 64
headers, names 1..255 bytes, the whole region at most 4096 bytes (the core's
prefix limit).
"""
from __future__ import annotations

import struct
from typing import Dict, Mapping, Optional, Tuple, Union

MAX_META = 4096
MAX_HEADERS = 64
HAS_KEY, META, DELAYED = 1, 2, 4   # prefix flags passed to the core (fq_set_prefix: FQ_PREFIX_*)
HeaderValue = Union[str, bytes]

_U16 = struct.Struct("<H")
_I64 = struct.Struct("<q")
_U32 = struct.Struct("<I")


def encode(key: Optional[bytes], headers: Optional[Mapping[str, HeaderValue]],
           not_before_ns: Optional[int] = None) -> Tuple[Optional[bytes], int]:
    """(prefix, flags) for a record with this key, headers and not-before
    time (ns since the epoch); (key, HAS_KEY) or (None, 0) when there are
    neither headers nor a delay."""
    if not_before_ns is not None:
        body, flags = encode(key, headers)
        if not flags & META:  # no headers: key length, key, an empty header list
            k = key or b""
            if len(k) > MAX_META - 12:
                raise ValueError(f"key of {len(k)} bytes leaves no room for the delay (at most {MAX_META - 12})")
            body = _U16.pack(len(k)) + k + _U16.pack(0)
        assert body is not None
        if len(body) + 8 > MAX_META:
            raise ValueError(f"key and headers take {len(body) + 8} bytes with the delay: at most {MAX_META}")
        return _I64.pack(not_before_ns) + body, META | DELAYED | (HAS_KEY if key is not None else 0)
    if not headers:
        return (key, HAS_KEY) if key is not None else (None, 0)
    if not isinstance(headers, Mapping):
        raise TypeError(f"headers must be a mapping of str to str or bytes, not {type(headers).__name__}")
    if len(headers) > MAX_HEADERS:
        raise ValueError(f"{len(headers)} headers: at most {MAX_HEADERS}")
    k = b"" if key is None else key
    if len(k) > MAX_META - 4:
        raise ValueError(f"key of {len(k)} bytes leaves no room for headers (key and headers: at most {MAX_META})")
    parts = [_U16.pack(len(k)), k, _U16.pack(len(headers))]
    for name, value in headers.items():
        if not isinstance(name, str):
            raise TypeError(f"header names must be str, not {type(name).__name__}")
        nb = name.encode("utf-8")
        if not 1 <= len(nb) <= 255:
            raise ValueError(f"header name {name!r} must be 1..255 bytes of UTF-8")
        if isinstance(value, str):
            kind, vb = 0, value.encode("utf-8")
        elif isinstance(value, (bytes, bytearray, memoryview)):
            kind, vb = 1, bytes(value)
        else:
            raise TypeError(f"header {name!r}: values must be str or bytes, not {type(value).__name__}")
        parts += [bytes((len(nb),)), nb, bytes((kind,)), _U32.pack(len(vb)), vb]
    prefix = b"".join(parts)
    if len(prefix) > MAX_META:
        raise ValueError(f"key and headers take {len(prefix)} bytes: at most {MAX_META}")
    return prefix, META | (HAS_KEY if key is not None else 0)


def split(prefix: bytes, has_key: bool, delayed: bool = False) -> Tuple[Optional[bytes], bytes]:
    """(key, raw headers) of a meta region; ValueError if it is malformed."""
    if delayed:
        prefix = prefix[8:]
    if len(prefix) < 2:
        raise ValueError("meta region shorter than its key length")
    kl = _U16.unpack_from(prefix)[0]
    if 2 + kl > len(prefix):
        raise ValueError("meta region: key longer than the region")
    return (prefix[2:2 + kl] if has_key else None), prefix[2 + kl:]


def decode_headers(raw: bytes) -> Dict[str, HeaderValue]:
    """The headers of a meta region's tail; ValueError if malformed."""
    if not raw:
        return {}
    if len(raw) < 2:
        raise ValueError("headers: truncated count")
    n = _U16.unpack_from(raw)[0]
    at, out = 2, {}
    for _ in range(n):
        if at >= len(raw):
            raise ValueError("headers: truncated")
        nl = raw[at]
        at += 1
        name = raw[at:at + nl].decode("utf-8")
        at += nl
        if at + 5 > len(raw) or nl == 0:
            raise ValueError("headers: truncated")
        kind = raw[at]
        vl = _U32.unpack_from(raw, at + 1)[0]
        at += 5
        if at + vl > len(raw) or kind > 1:
            raise ValueError("headers: bad value")
        v = raw[at:at + vl]
        at += vl
        out[name] = v.decode("utf-8") if kind == 0 else bytes(v)
    if at != len(raw):
        raise ValueError("headers: trailing bytes")
    return out
