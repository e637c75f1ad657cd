"""Parsing and offline checks of the CCCD chip ID card QR text."""

from __future__ import annotations

import unicodedata
from dataclasses import replace
from datetime import date

import pytest

from device.cccd import CCCD, PROVINCES, Sex, format_cccd, make_id_number, parse_cccd
from device.errors import InvalidCredential, UnrecognizedCode

TODAY = date(2025, 6, 1)

# A valid card; each invalid case below breaks it in one way.
BASE = "001099012345||Nguyễn Văn An|15031999|Nam|Số 12 Phố Huế, Hà Nội|20042021"

BASE_CARD = CCCD(
    id_number="001099012345",
    old_id_number="",
    name="Nguyễn Văn An",
    date_of_birth=date(1999, 3, 15),
    sex="Nam",
    address="Số 12 Phố Huế, Hà Nội",
    issued_on=date(2021, 4, 20),
    extra=(),
    warnings=(),
)

WOMAN_1985 = "079185001234|025123456|Trần Thị Bích|02071985|Nữ|12 Lê Lợi, Quận 1, TP.HCM|10082022"

WOMAN_1985_CARD = CCCD(
    id_number="079185001234",
    old_id_number="025123456",
    name="Trần Thị Bích",
    date_of_birth=date(1985, 7, 2),
    sex="Nữ",
    address="12 Lê Lợi, Quận 1, TP.HCM",
    issued_on=date(2022, 8, 10),
    extra=(),
    warnings=(),
)

SIX_FIELDS = "036090004321|Đỗ Minh Đức|07071990|Nam|Nam Định|15052021"

SIX_FIELDS_CARD = CCCD(
    id_number="036090004321",
    old_id_number="",
    name="Đỗ Minh Đức",
    date_of_birth=date(1990, 7, 7),
    sex="Nam",
    address="Nam Định",
    issued_on=date(2021, 5, 15),
    extra=(),
    warnings=(),
)

LONGEST_NAME = "Tôn Nữ " + "A" * 93

VALID = [
    pytest.param(BASE, BASE_CARD, id="7-field-man-1900s"),
    pytest.param(WOMAN_1985, WOMAN_1985_CARD, id="7-field-woman-1900s-with-cmnd"),
    pytest.param(
        "048204000777||Lê Văn Cường|29022004|Nam|Hải Châu, Đà Nẵng|01062021",
        CCCD(
            id_number="048204000777",
            old_id_number="",
            name="Lê Văn Cường",
            date_of_birth=date(2004, 2, 29),
            sex="Nam",
            address="Hải Châu, Đà Nẵng",
            issued_on=date(2021, 6, 1),
            extra=(),
            warnings=(),
        ),
        id="man-2000s-leap-day",
    ),
    pytest.param(
        "001305123456||Phạm Thu Hà|31122005|Nữ|Cầu Giấy, Hà Nội|01062025",
        CCCD(
            id_number="001305123456",
            old_id_number="",
            name="Phạm Thu Hà",
            date_of_birth=date(2005, 12, 31),
            sex="Nữ",
            address="Cầu Giấy, Hà Nội",
            issued_on=TODAY,
            extra=(),
            warnings=(),
        ),
        id="woman-2000s-issued-today",
    ),
    pytest.param(SIX_FIELDS, SIX_FIELDS_CARD, id="6-field-no-cmnd-slot"),
    pytest.param(
        SIX_FIELDS + "|Nguyễn Văn Bố|",
        replace(SIX_FIELDS_CARD, extra=("Nguyễn Văn Bố", "")),
        id="6-field-then-extra-fields",
    ),
    pytest.param(
        BASE + "|Nguyễn Văn Bố|Trần Thị Mẹ",
        replace(BASE_CARD, extra=("Nguyễn Văn Bố", "Trần Thị Mẹ")),
        id="7-field-then-extra-fields",
    ),
    pytest.param(
        unicodedata.normalize("NFD", WOMAN_1985), WOMAN_1985_CARD, id="nfd-input-normalised"
    ),
    pytest.param(f"  {BASE}\r\n", BASE_CARD, id="surrounding-whitespace-and-newline"),
    pytest.param(
        BASE.replace("001099", "003099"),
        replace(BASE_CARD, id_number="003099012345", warnings=("cccd_unknown_province",)),
        id="unknown-province-warns",
    ),
    pytest.param(
        BASE.replace("Nguyễn Văn An", LONGEST_NAME),
        replace(BASE_CARD, name=LONGEST_NAME),
        id="100-char-name",
    ),
    pytest.param(
        BASE.replace("20042021", "15031999"),
        replace(BASE_CARD, issued_on=date(1999, 3, 15)),
        id="issued-on-birthday",
    ),
]


@pytest.mark.parametrize(("text", "expected"), VALID)
def test_valid_cards_parse(text: str, expected: CCCD) -> None:
    assert parse_cccd(text, today=TODAY) == expected


def _with_id(id_number: str) -> str:
    return BASE.replace("001099012345", id_number)


INVALID = [
    pytest.param(_with_id("00109901234"), "cccd_bad_id_number", id="id-11-digits"),
    pytest.param(_with_id("0010990123456"), "cccd_bad_id_number", id="id-13-digits"),
    pytest.param(_with_id("00109901234X"), "cccd_bad_id_number", id="id-letter"),
    pytest.param(_with_id("0010990１2345"), "cccd_bad_id_number", id="id-fullwidth-digit"),
    pytest.param(_with_id("001099 012345"), "cccd_bad_id_number", id="id-inner-space"),
    pytest.param(BASE.replace("||", "|12345678|"), "cccd_bad_old_id", id="old-id-8-digits"),
    pytest.param(BASE.replace("||", "|12345678X|"), "cccd_bad_old_id", id="old-id-letter"),
    pytest.param(BASE.replace("||", "|001099012345|"), "cccd_bad_old_id", id="old-id-12-digits"),
    pytest.param(BASE.replace("Nguyễn Văn An", ""), "cccd_bad_name", id="name-empty"),
    pytest.param(BASE.replace("Nguyễn Văn An", "   "), "cccd_bad_name", id="name-blank"),
    pytest.param(
        BASE.replace("Nguyễn Văn An", LONGEST_NAME + "A"), "cccd_bad_name", id="name-101-chars"
    ),
    pytest.param(BASE.replace("Văn", "V\x1b[2Jăn"), "cccd_bad_name", id="name-control-char"),
    pytest.param(BASE.replace("|Nam|", "|nam|"), "cccd_bad_sex", id="sex-lowercase"),
    pytest.param(BASE.replace("|Nam|", "|Nu|"), "cccd_bad_sex", id="sex-no-diacritic"),
    pytest.param(BASE.replace("|Nam|", "|Male|"), "cccd_bad_sex", id="sex-english"),
    pytest.param(BASE.replace("|Nam|", "||"), "cccd_bad_sex", id="sex-empty"),
    pytest.param(BASE.replace("15031999", "30021999"), "cccd_bad_date", id="birth-feb-30"),
    pytest.param(BASE.replace("15031999", "1503199"), "cccd_bad_date", id="birth-7-digits"),
    pytest.param(BASE.replace("15031999", "15/03/1999"), "cccd_bad_date", id="birth-slashes"),
    pytest.param(BASE.replace("20042021", "32042021"), "cccd_bad_date", id="issue-day-32"),
    pytest.param(BASE.replace("20042021", "20132021"), "cccd_bad_date", id="issue-month-13"),
    pytest.param(_with_id("001299012345"), "cccd_century_mismatch", id="id-says-2000s"),
    pytest.param(_with_id("001499012345"), "cccd_century_mismatch", id="id-says-2100s"),
    pytest.param(BASE.replace("|Nam|", "|Nữ|"), "cccd_sex_mismatch", id="id-man-card-woman"),
    pytest.param(WOMAN_1985.replace("|Nữ|", "|Nam|"), "cccd_sex_mismatch", id="id-woman-card-man"),
    pytest.param(_with_id("001098012345"), "cccd_birth_year_mismatch", id="id-year-98-born-99"),
    pytest.param(
        BASE.replace("20042021", "14031999"), "cccd_date_order", id="issued-day-before-birth"
    ),
    pytest.param(BASE.replace("20042021", "02062025"), "cccd_future_date", id="issued-tomorrow"),
    pytest.param(
        "001225012345||Nguyễn Văn An|02062025|Nam|Hà Nội|01062025",
        "cccd_future_date",
        id="born-tomorrow-issued-today",
    ),
]


@pytest.mark.parametrize(("text", "reason"), INVALID)
def test_invalid_cards_are_rejected_with_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidCredential) as caught:
        parse_cccd(text, today=TODAY)
    assert caught.value.reason == reason


UNRECOGNIZED = [
    pytest.param("", id="empty"),
    pytest.param("  \n", id="blank"),
    pytest.param("https://example.com/checkin?a=1|2|3|4|5|6", id="url"),
    pytest.param("001099012345", id="plain-number"),
    pytest.param("HC1:NCFOXN%TS3DH3ZSUZK+.V0ETD%65NL-AH", id="eu-covid-certificate"),
    pytest.param("001099012345|Nguyễn Văn An|15031999|Nam|Hà Nội", id="five-fields"),
    pytest.param("|" + BASE, id="empty-first-field"),
    pytest.param("ID001099012345||Nguyễn Văn An|15031999|Nam|Hà Nội|20042021", id="letter-first"),
]


@pytest.mark.parametrize("text", UNRECOGNIZED)
def test_non_cccd_text_is_unrecognized(text: str) -> None:
    with pytest.raises(UnrecognizedCode) as caught:
        parse_cccd(text, today=TODAY)
    assert caught.value.reason == "unrecognized"


def test_rejection_carries_who_tried() -> None:
    text = BASE.replace("|Nam|", "|Nữ|")
    with pytest.raises(InvalidCredential) as caught:
        parse_cccd(unicodedata.normalize("NFD", text), today=TODAY)
    error = caught.value
    assert (error.id_number, error.name, error.date_of_birth) == (
        "001099012345",
        "Nguyễn Văn An",
        "1999-03-15",
    )


def test_unparseable_birth_date_is_kept_raw_in_rejection() -> None:
    with pytest.raises(InvalidCredential) as caught:
        parse_cccd(BASE.replace("15031999", "30021999"), today=TODAY)
    assert caught.value.date_of_birth == "30021999"
    assert caught.value.id_number == "001099012345"


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (BASE.replace("15031999", "31041999"), "date of birth"),
        (BASE.replace("20042021", "29022021"), "date of issue"),
    ],
)
def test_bad_date_names_the_field(text: str, field: str) -> None:
    with pytest.raises(InvalidCredential, match=field):
        parse_cccd(text, today=TODAY)


def test_province_code_is_first_three_digits() -> None:
    card = parse_cccd(WOMAN_1985, today=TODAY)
    assert card.province_code == "079"
    assert PROVINCES[card.province_code] == "Hồ Chí Minh"


def test_province_table_is_the_63_of_the_circular() -> None:
    assert len(PROVINCES) == 63
    assert all(len(code) == 3 and code.isdigit() for code in PROVINCES)
    assert all(unicodedata.is_normalized("NFC", name) for name in PROVINCES.values())
    assert (PROVINCES["001"], PROVINCES["096"]) == ("Hà Nội", "Cà Mau")


def test_format_cccd_builds_the_seven_field_text() -> None:
    text = format_cccd(
        id_number="079185001234",
        old_id_number="025123456",
        name="Trần Thị Bích",
        date_of_birth=date(1985, 7, 2),
        sex="Nữ",
        address="12 Lê Lợi, Quận 1, TP.HCM",
        issued_on=date(2022, 8, 10),
    )
    assert text == WOMAN_1985


@pytest.mark.parametrize("field", ["name", "address"])
@pytest.mark.parametrize("bad", ["a|b", "a\nb"])
def test_format_cccd_refuses_shape_breaking_text(field: str, bad: str) -> None:
    fields = {"name": "Trần Thị Bích", "address": "Hà Nội", field: bad}
    with pytest.raises(ValueError, match="line breaks"):
        format_cccd(
            id_number="079185001234",
            date_of_birth=date(1985, 7, 2),
            sex="Nữ",
            issued_on=date(2022, 8, 10),
            name=fields["name"],
            address=fields["address"],
        )


@pytest.mark.parametrize(
    ("province", "sex", "born", "serial", "expected"),
    [
        ("001", "Nam", date(1999, 3, 15), 12345, "001099012345"),
        ("079", "Nữ", date(1985, 7, 2), 1234, "079185001234"),
        ("048", "Nam", date(2004, 2, 29), 777, "048204000777"),
        ("001", "Nữ", date(2005, 12, 31), 123456, "001305123456"),
        ("096", "Nữ", date(2100, 1, 1), 0, "096500000000"),
        ("096", "Nam", date(2399, 1, 1), 999999, "096899999999"),
    ],
)
def test_make_id_number(province: str, sex: str, born: date, serial: int, expected: str) -> None:
    assert (
        make_id_number(province_code=province, sex=sex, date_of_birth=born, serial=serial)
        == expected
    )


@pytest.mark.parametrize(
    ("province", "sex", "born", "serial"),
    [
        ("01", "Nam", date(1999, 1, 1), 1),
        ("0a1", "Nam", date(1999, 1, 1), 1),
        ("001", "Male", date(1999, 1, 1), 1),
        ("001", "Nam", date(1899, 12, 31), 1),
        ("001", "Nam", date(2400, 1, 1), 1),
        ("001", "Nam", date(1999, 1, 1), -1),
        ("001", "Nam", date(1999, 1, 1), 1_000_000),
    ],
)
def test_make_id_number_refuses_what_cannot_be_encoded(
    province: str, sex: str, born: date, serial: int
) -> None:
    with pytest.raises(ValueError):
        make_id_number(province_code=province, sex=sex, date_of_birth=born, serial=serial)


@pytest.mark.parametrize("sex", ["Nam", "Nữ"])
@pytest.mark.parametrize("born", [date(1950, 1, 31), date(2001, 9, 2), date(2012, 12, 12)])
def test_generated_cards_parse_back(sex: Sex, born: date) -> None:
    id_number = make_id_number(
        province_code="031", sex=unicodedata.normalize("NFD", sex), date_of_birth=born, serial=42
    )
    issued = date(2024, 7, 1)
    text = format_cccd(
        id_number=id_number,
        name="Vũ Hải",
        date_of_birth=born,
        sex=sex,
        address="Lê Chân, Hải Phòng",
        issued_on=issued,
    )
    card = parse_cccd(text, today=TODAY)
    assert (card.id_number, card.sex, card.date_of_birth, card.issued_on) == (
        id_number,
        sex,
        born,
        issued,
    )
