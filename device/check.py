"""``python -m device check``: why was this code accepted or rejected?

Prints one JSON object with at least ``kind``, ``accepted`` and ``reason``,
plus the fields that are safe to show a technician: initials, a masked ID
number, the birth year, validity, zones and the credential's own details.
Scripts depend on these keys; add keys, never rename them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from broker.settings import DecoderConfig
from device.badge import BadgeReader
from device.credentials import CccdReader, CredentialReader, Verdict, recognize
from device.dcc import DccReader
from device.decision import initials
from device.decoder import make_decoder, to_gray
from device.errors import DeviceError
from device.trust import TrustList

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class CheckInputError(DeviceError):
    """The input is neither QR text nor a readable image."""


def mask_id(number: str) -> str:
    """'079203001234' -> '079*******34': enough to tell cards apart, not to copy one."""
    if len(number) <= 5:
        return "*" * len(number)
    return number[:3] + "*" * (len(number) - 5) + number[-2:]


def texts_from_input(source: str) -> tuple[str, list[str]]:
    """('image', decoded texts) for an image path, else ('text', [source])."""
    path = Path(source)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return "text", [source]
    try:
        with Image.open(path) as image:
            gray = to_gray(image)
    except (OSError, UnidentifiedImageError) as exc:
        raise CheckInputError(f"cannot read image {path}: {exc}") from None
    return "image", make_decoder(DecoderConfig(try_invert=True)).decode(gray)


def make_readers(
    *, trust: Path | None, badge_keys: Path | None, site: str | None
) -> list[CredentialReader]:
    """Readers for every kind; keys and trust list come from the technician's files."""
    keys: dict[str, str] = {}
    if badge_keys is not None:
        try:
            keys = json.loads(badge_keys.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CheckInputError(f"cannot read badge keys {badge_keys}: {exc}") from None
    trust_list = TrustList.from_pem_file(trust) if trust else TrustList.from_pem_texts([])
    return [CccdReader(), BadgeReader(keys, site_id=site), DccReader(trust_list)]


def report(verdict: Verdict, *, at: datetime) -> dict[str, Any]:
    """The verdict as the JSON object ``check`` prints."""
    out: dict[str, Any] = {
        "kind": verdict.kind,
        "accepted": verdict.accepted,
        "reason": verdict.reason,
        "warnings": list(verdict.warnings),
        "checked_at": at.isoformat(),
    }
    if verdict.name:
        out["name"] = initials(verdict.name)
    if verdict.id_number:
        out["id_number"] = mask_id(verdict.id_number)
    if verdict.date_of_birth:
        out["birth_year"] = verdict.date_of_birth[:4]
    if verdict.credential_id:
        out["credential_id"] = verdict.credential_id
    if verdict.expires_at is not None:
        out["expires_at"] = verdict.expires_at.isoformat()
    if verdict.zones:
        out["zones"] = list(verdict.zones)
    if verdict.details:
        out["details"] = dict(verdict.details)
    return out


def check(source: str, *, readers: Sequence[CredentialReader], at: datetime) -> dict[str, Any]:
    """Check QR text or every code in an image; one JSON-ready object."""
    origin, texts = texts_from_input(source)
    if not texts:
        return {"kind": "none", "accepted": False, "reason": "no_code_found", "source": origin}
    results = [report(recognize(t, now=at, readers=readers), at=at) for t in texts]
    first = {**results[0], "source": origin}
    if len(results) > 1:
        first["other_codes"] = results[1:]
    return first
