"""The QR code on the Vietnamese chip ID card (CCCD / Căn cước), parsed and checked offline.

The card's QR holds pipe-separated text::

    ID12|CMND9-or-empty|Full name|DDMMYYYY|Nam/Nữ|address|DDMMYYYY[|more…]

(id number, old 9-digit CMND number or empty, full name, date of birth, sex,
permanent address, date of issue; newer cards append more fields). Some cards
omit the CMND slot and carry six fields. The 12-digit id number encodes the
province, the century and sex, and the birth year (Circular 07/2016/TT-BCA),
which lets a gate catch a forged or corrupted card without any network.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from types import MappingProxyType
from typing import Literal, NamedTuple

from device.errors import InvalidCredential, UnrecognizedCode

logger = logging.getLogger(__name__)

Sex = Literal["Nam", "Nữ"]

_SEXES: Mapping[str, Sex] = MappingProxyType({"Nam": "Nam", "Nữ": "Nữ"})
_ID_NUMBER = re.compile(r"[0-9]{12}")
_OLD_ID_NUMBER = re.compile(r"[0-9]{9}")
_LEADING_DIGIT = re.compile(r"[0-9]")
_DATE = re.compile(r"[0-9]{8}")
_PROVINCE_CODE = re.compile(r"[0-9]{3}")
_MIN_FIELDS = 6
_MAX_NAME_CHARS = 100
_FIRST_CENTURY = 1900
_LAST_YEAR = 2399  # century digits 0-9 cover 1900-2399
_MAX_SERIAL = 999_999
# Context copied into errors is clipped so a hostile code cannot flood logs.
_MAX_CONTEXT_CHARS = 120

PROVINCES: Mapping[str, str] = MappingProxyType(
    {
        "001": "Hà Nội",
        "002": "Hà Giang",
        "004": "Cao Bằng",
        "006": "Bắc Kạn",
        "008": "Tuyên Quang",
        "010": "Lào Cai",
        "011": "Điện Biên",
        "012": "Lai Châu",
        "014": "Sơn La",
        "015": "Yên Bái",
        "017": "Hoà Bình",
        "019": "Thái Nguyên",
        "020": "Lạng Sơn",
        "022": "Quảng Ninh",
        "024": "Bắc Giang",
        "025": "Phú Thọ",
        "026": "Vĩnh Phúc",
        "027": "Bắc Ninh",
        "030": "Hải Dương",
        "031": "Hải Phòng",
        "033": "Hưng Yên",
        "034": "Thái Bình",
        "035": "Hà Nam",
        "036": "Nam Định",
        "037": "Ninh Bình",
        "038": "Thanh Hoá",
        "040": "Nghệ An",
        "042": "Hà Tĩnh",
        "044": "Quảng Bình",
        "045": "Quảng Trị",
        "046": "Thừa Thiên Huế",
        "048": "Đà Nẵng",
        "049": "Quảng Nam",
        "051": "Quảng Ngãi",
        "052": "Bình Định",
        "054": "Phú Yên",
        "056": "Khánh Hoà",
        "058": "Ninh Thuận",
        "060": "Bình Thuận",
        "062": "Kon Tum",
        "064": "Gia Lai",
        "066": "Đắk Lắk",
        "067": "Đắk Nông",
        "068": "Lâm Đồng",
        "070": "Bình Phước",
        "072": "Tây Ninh",
        "074": "Bình Dương",
        "075": "Đồng Nai",
        "077": "Bà Rịa - Vũng Tàu",
        "079": "Hồ Chí Minh",
        "080": "Long An",
        "082": "Tiền Giang",
        "083": "Bến Tre",
        "084": "Trà Vinh",
        "086": "Vĩnh Long",
        "087": "Đồng Tháp",
        "089": "An Giang",
        "091": "Kiên Giang",
        "092": "Cần Thơ",
        "093": "Hậu Giang",
        "094": "Sóc Trăng",
        "095": "Bạc Liêu",
        "096": "Cà Mau",
    }
)
"""Province and city codes (first 3 id digits) of Circular 07/2016/TT-BCA."""


@dataclass(frozen=True, slots=True)
class CCCD:
    """A chip ID card read from its QR code; every offline rule has been checked.

    ``warnings`` holds stable labels for oddities that do not reject the card,
    such as ``"cccd_unknown_province"``.
    """

    id_number: str
    old_id_number: str
    name: str
    date_of_birth: date
    sex: Sex
    address: str
    issued_on: date
    extra: tuple[str, ...]
    warnings: tuple[str, ...]

    @property
    def province_code(self) -> str:
        """The first three digits of the id number: where the card was registered."""
        return self.id_number[:3]


class _RawCard(NamedTuple):
    """The card's fields as text, before any rule is checked."""

    id_number: str
    old_id_number: str
    name: str
    date_of_birth: str
    sex: str
    address: str
    issued_on: str
    extra: tuple[str, ...]


def parse_cccd(text: str, *, today: date) -> CCCD:
    """Parse and check the QR text of a CCCD card.

    The text is normalised to NFC and stripped, and each field is stripped.

    Boundary between "not a CCCD" and "a bad CCCD": text with at least six
    ``|``-separated fields whose first field starts with an ASCII digit is a
    CCCD attempt, and a broken rule raises ``InvalidCredential`` with a
    ``cccd_*`` reason and whatever identity could be read. Anything else
    (URLs, plain numbers, other health or ticket codes) raises
    ``UnrecognizedCode`` so other parsers may try it.

    Six fields are the form without the CMND slot. With seven or more, the
    CMND slot is assumed present unless fields 3 and 4 read as a date and a
    sex, which is the six-field form followed by extra fields.
    """
    raw = _split(text)
    _check_text_fields(raw)
    date_of_birth = _parse_date(raw, raw.date_of_birth, "date of birth")
    issued_on = _parse_date(raw, raw.issued_on, "date of issue")
    _check_id_matches_person(raw, date_of_birth)
    _check_date_order(raw, date_of_birth, issued_on, today)
    return CCCD(
        id_number=raw.id_number,
        old_id_number=raw.old_id_number,
        name=raw.name,
        date_of_birth=date_of_birth,
        sex=_SEXES[raw.sex],
        address=raw.address,
        issued_on=issued_on,
        extra=raw.extra,
        warnings=_warnings(raw.id_number),
    )


def _split(text: str) -> _RawCard:
    normalised = unicodedata.normalize("NFC", text).strip()
    fields = [field.strip() for field in normalised.split("|")]
    if len(fields) < _MIN_FIELDS or not _LEADING_DIGIT.match(fields[0]):
        raise UnrecognizedCode("not a CCCD: expected 6+ '|'-separated fields led by the id number")
    old_id_number, rest = (fields[1], fields[2:]) if _has_old_id_slot(fields) else ("", fields[1:])
    name, born, sex, address, issued = rest[:5]
    return _RawCard(fields[0], old_id_number, name, born, sex, address, issued, tuple(rest[5:]))


def _has_old_id_slot(fields: list[str]) -> bool:
    if len(fields) == _MIN_FIELDS:
        return False
    return not (_DATE.fullmatch(fields[2]) and fields[3] in _SEXES)


def _check_text_fields(raw: _RawCard) -> None:
    if not _ID_NUMBER.fullmatch(raw.id_number):
        raise _invalid(raw, "cccd_bad_id_number", "id number must be exactly 12 ASCII digits")
    if raw.old_id_number and not _OLD_ID_NUMBER.fullmatch(raw.old_id_number):
        raise _invalid(raw, "cccd_bad_old_id", "old id number must be 9 ASCII digits or empty")
    if not _is_reasonable_name(raw.name):
        raise _invalid(
            raw,
            "cccd_bad_name",
            f"name must be 1-{_MAX_NAME_CHARS} characters without control characters",
        )
    if raw.sex not in _SEXES:
        raise _invalid(raw, "cccd_bad_sex", "sex must be 'Nam' or 'Nữ'")


def _is_reasonable_name(name: str) -> bool:
    if not name or len(name) > _MAX_NAME_CHARS:
        return False
    return not any(unicodedata.category(char) == "Cc" for char in name)


def _parse_date(raw: _RawCard, text: str, field: str) -> date:
    parsed = _date_or_none(text)
    if parsed is None:
        raise _invalid(raw, "cccd_bad_date", f"{field} is not a real DDMMYYYY date")
    return parsed


def _date_or_none(text: str) -> date | None:
    if not _DATE.fullmatch(text):
        return None
    try:
        return date(int(text[4:]), int(text[2:4]), int(text[:2]))
    except ValueError:
        return None


def _check_id_matches_person(raw: _RawCard, date_of_birth: date) -> None:
    digit = int(raw.id_number[3])
    century = _FIRST_CENTURY + 100 * (digit // 2)
    if date_of_birth.year // 100 * 100 != century:
        raise _invalid(
            raw,
            "cccd_century_mismatch",
            f"id century digit {digit} means born {century}-{century + 99}, "
            f"but the date of birth is in {date_of_birth.year}",
        )
    if _century_digit_sex(digit) != raw.sex:
        raise _invalid(raw, "cccd_sex_mismatch", f"id sex digit {digit} disagrees with the sex")
    if raw.id_number[4:6] != f"{date_of_birth.year % 100:02d}":
        raise _invalid(
            raw, "cccd_birth_year_mismatch", "id digits 5-6 disagree with the year of birth"
        )


def _century_digit_sex(digit: int) -> Sex:
    return "Nam" if digit % 2 == 0 else "Nữ"


def _check_date_order(raw: _RawCard, date_of_birth: date, issued_on: date, today: date) -> None:
    # A future date is checked first: it is the plainer sign of a bad card.
    if date_of_birth > today or issued_on > today:
        raise _invalid(
            raw, "cccd_future_date", f"date of birth or of issue is after today ({today})"
        )
    if issued_on < date_of_birth:
        raise _invalid(raw, "cccd_date_order", "date of issue is before the date of birth")


def _warnings(id_number: str) -> tuple[str, ...]:
    province_code = id_number[:3]
    if province_code in PROVINCES:
        return ()
    logger.info("CCCD province code %s is not in Circular 07/2016/TT-BCA", province_code)
    return ("cccd_unknown_province",)


def _invalid(raw: _RawCard, reason: str, message: str) -> InvalidCredential:
    # Messages leave out names and numbers; they go only in the attributes,
    # which investigators read and ordinary logs need not print.
    born = _date_or_none(raw.date_of_birth)
    return InvalidCredential(
        f"invalid CCCD: {message}",
        reason=reason,
        id_number=_clip(raw.id_number),
        name=_clip(raw.name),
        date_of_birth=born.isoformat() if born else _clip(raw.date_of_birth),
    )


def _clip(text: str) -> str:
    return text[:_MAX_CONTEXT_CHARS]


def format_cccd(
    *,
    id_number: str,
    name: str,
    date_of_birth: date,
    sex: Sex,
    address: str,
    issued_on: date,
    old_id_number: str = "",
) -> str:
    """Build the 7-field QR text of a card; the fields are not checked, so bad cards can be made.

    Raises ValueError if a field holds ``|`` or a line break, which would
    change the card's shape rather than its content.
    """
    fields = [
        id_number,
        old_id_number,
        name,
        _ddmmyyyy(date_of_birth),
        sex,
        address,
        _ddmmyyyy(issued_on),
    ]
    if any(char in field for field in fields for char in "|\r\n"):
        raise ValueError("CCCD fields must not contain '|' or line breaks")
    return "|".join(fields)


def _ddmmyyyy(day: date) -> str:
    return f"{day.day:02d}{day.month:02d}{day.year:04d}"


def make_id_number(*, province_code: str, sex: str, date_of_birth: date, serial: int) -> str:
    """Build a 12-digit id number consistent with the province, sex and date of birth.

    The province code need only be three digits, so cards from unknown
    provinces can be made too. Raises ValueError for anything that cannot be
    encoded.
    """
    sex = unicodedata.normalize("NFC", sex)
    if not _PROVINCE_CODE.fullmatch(province_code):
        raise ValueError(f"province code must be 3 ASCII digits, got {province_code!r}")
    if sex not in _SEXES:
        raise ValueError(f"sex must be 'Nam' or 'Nữ', got {sex!r}")
    year = date_of_birth.year
    if not _FIRST_CENTURY <= year <= _LAST_YEAR:
        raise ValueError(f"year of birth must be {_FIRST_CENTURY}-{_LAST_YEAR}, got {year}")
    if not 0 <= serial <= _MAX_SERIAL:
        raise ValueError(f"serial must be 0-{_MAX_SERIAL}, got {serial}")
    digit = (year - _FIRST_CENTURY) // 100 * 2 + (0 if sex == "Nam" else 1)
    return f"{province_code}{digit}{year % 100:02d}{serial:06d}"
