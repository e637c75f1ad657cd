"""Bounded decoding of the layers of signed QR credentials (badges and health passes).

Both ``QRG1:`` badges and ``HC1:`` passes are zlib-compressed CBOR; hostile
input must never inflate without bound or smuggle data after the CBOR item.
Each function raises :class:`EnvelopeError`, which each reader turns into its
own rejection reason.
"""

from __future__ import annotations

import io
import zlib

import cbor2


class EnvelopeError(ValueError):
    """A layer of a credential does not decode."""


def inflate(data: bytes, *, limit: int) -> bytes:
    """Decompress a complete zlib stream of at most ``limit`` bytes."""
    # Bounded: a few hundred bytes of zlib can inflate to gigabytes.
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, limit)
    except zlib.error as exc:
        raise EnvelopeError(f"zlib: {exc}") from exc
    if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
        raise EnvelopeError("zlib stream truncated, oversized or followed by data")
    return raw


def cbor_exact(data: bytes) -> object:
    """The one CBOR item that is the whole of ``data``; duplicate map keys refused."""
    stream = io.BytesIO(data)
    try:
        # cbor2 >= 6 wraps every decoding failure, its semantic decoders' included, in
        # CBORError; anything else is a bug to surface, not a credential to refuse.
        item: object = cbor2.load(stream, allow_duplicate_keys=False)
    except cbor2.CBORError as exc:
        raise EnvelopeError(f"CBOR: {exc}") from exc
    if stream.read(1):
        raise EnvelopeError("data after the CBOR item")
    return item
