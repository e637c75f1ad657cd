"""Site badges: issuing, the QRG1 format, every rejection reason, keys on disk, and a real scan."""

from __future__ import annotations

import io
import json
import random
import stat
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import base45
import cbor2
import pytest
import segno
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from PIL import Image

from broker.settings import CredentialsConfig, DecoderConfig
from device.badge import BadgeReader
from device.credentials import CccdReader, recognize
from device.decoder import make_decoder, to_gray
from device.errors import BadgeKeyError, ConfigError
from provisioning.badges import (
    Badge,
    BadgeIssueError,
    IssuerKey,
    generate_issuer_key,
    issue_badge,
    sidecar,
)

SITE = "xuong-may-a"
KID = "hcm-2025"
NAME = "Nguyễn Thị Hồng Nhung"
ZONES = ("cong-chinh", "xuong-1", "kho")
START = datetime(2025, 6, 1, 7, 0, tzinfo=UTC)
END = datetime(2026, 6, 1, 7, 0, tzinfo=UTC)
NOW = datetime(2025, 9, 15, 8, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def key() -> IssuerKey:
    return generate_issuer_key(KID)


@pytest.fixture(scope="module")
def reader(key: IssuerKey) -> BadgeReader:
    return BadgeReader({KID: key.public_text()}, site_id=SITE)


def issue(key: IssuerKey, **overrides: object) -> Badge:
    fields: dict[str, object] = {
        "subject_id": "NV-004521",
        "name": NAME,
        "site_id": SITE,
        "zones": ZONES,
        "valid_from": START,
        "valid_until": END,
        "badge_id": "K7Q2M4XD9TRA",
        "issued_at": START - timedelta(days=1),
    }
    fields.update(overrides)
    return issue_badge(key, **fields)  # type: ignore[arg-type]


def cose_bytes(text: str) -> bytes:
    return zlib.decompress(base45.b45decode(text.removeprefix("QRG1:")))


def qrg1(cose: bytes) -> str:
    encoded: bytes = base45.b45encode(zlib.compress(cose))
    return "QRG1:" + encoded.decode("ascii")


def claims_map(**overrides: object) -> dict[int, object]:
    """A valid payload in the documented layout; an override of None drops that claim."""
    claims: dict[int, object] = {
        1: SITE,
        2: "NV-004521",
        4: int(END.timestamp()),
        5: int(START.timestamp()),
        6: int(START.timestamp()),
        -1: "K7Q2M4XD9TRA",
        -2: NAME,
        -3: list(ZONES),
    }
    keys = {"site": 1, "sub": 2, "exp": 4, "nbf": 5, "iat": 6, "bid": -1, "name": -2, "zones": -3}
    for name, value in overrides.items():
        if value is None:
            del claims[keys[name]]
        else:
            claims[keys[name]] = value
    return claims


def sign1(
    private: Ed25519PrivateKey,
    payload: bytes,
    *,
    protected: dict[int, object] | None = None,
    tag: int = 18,
) -> bytes:
    """A COSE_Sign1 made without pycose: cbor2 for the Sig_structure, cryptography to sign."""
    header = cbor2.dumps(protected if protected is not None else {1: -8, 4: KID.encode()})
    signature = private.sign(cbor2.dumps(["Signature1", header, b"", payload]))
    return cbor2.dumps(cbor2.CBORTag(tag, [header, {}, payload, signature]))


def test_issued_badge_is_accepted_with_all_claims(key: IssuerKey, reader: BadgeReader) -> None:
    verdict = reader.read(issue(key).text, now=NOW)

    assert verdict is not None
    assert (verdict.kind, verdict.accepted, verdict.reason) == ("badge", True, "ok")
    assert verdict.id_number == f"{SITE}:NV-004521"
    assert verdict.name == NAME
    assert verdict.credential_id == "K7Q2M4XD9TRA"
    assert verdict.expires_at == END
    assert verdict.zones == ZONES
    assert dict(verdict.details) == {
        "site": SITE,
        "zones": "cong-chinh,xuong-1,kho",
        "key_id": KID,
        "badge_id": "K7Q2M4XD9TRA",
        "valid_from": "2025-06-01T07:00:00+00:00",
        "valid_until": "2026-06-01T07:00:00+00:00",
    }


def test_badge_claims_survive_the_round_trip(key: IssuerKey) -> None:
    badge = issue(key)
    payload = cbor2.loads(cbor2.loads(cose_bytes(badge.text)).value[2])

    assert payload == claims_map(iat=int((START - timedelta(days=1)).timestamp()))
    assert badge.key_id == KID
    assert badge.claims.valid_until == END


def test_signature_is_standard_cose_sign1_eddsa(key: IssuerKey) -> None:
    message = cbor2.loads(cose_bytes(issue(key).text))
    protected, _, payload, signature = message.value
    sig_structure = cbor2.dumps(["Signature1", protected, b"", payload])

    assert message.tag == 18
    assert cbor2.loads(protected) == {1: -8, 4: KID.encode()}
    Ed25519PublicKey.from_public_bytes(key.public_raw()).verify(signature, sig_structure)


def test_badge_signed_without_pycose_is_accepted(key: IssuerKey, reader: BadgeReader) -> None:
    text = qrg1(sign1(key.private_key, cbor2.dumps(claims_map())))

    verdict = reader.read(text, now=NOW)

    assert verdict is not None and verdict.accepted, verdict


def test_generated_badge_ids_are_unique_base32(key: IssuerKey) -> None:
    ids = {issue(key, badge_id=None).claims.badge_id for _ in range(20)}

    assert len(ids) == 20
    assert all(len(i) == 12 and i.isalnum() and i.isupper() for i in ids)


@pytest.mark.parametrize(
    ("now", "reason"),
    [
        (END, "badge_expired"),
        (END + timedelta(days=30), "badge_expired"),
        (START - timedelta(seconds=1), "badge_not_yet_valid"),
        (START, "ok"),
        (END - timedelta(seconds=1), "ok"),
    ],
    ids=["at-expiry", "after-expiry", "before-start", "at-start", "last-second"],
)
def test_validity_window(key: IssuerKey, reader: BadgeReader, now: datetime, reason: str) -> None:
    verdict = reader.read(issue(key).text, now=now)

    assert verdict is not None and verdict.reason == reason


def test_naive_now_is_local_time(key: IssuerKey, reader: BadgeReader) -> None:
    naive_after_end = (END + timedelta(hours=1)).astimezone().replace(tzinfo=None)

    verdict = reader.read(issue(key).text, now=naive_after_end)

    assert verdict is not None and verdict.reason == "badge_expired"


def test_wrong_site_keeps_the_identity(key: IssuerKey) -> None:
    other_site = BadgeReader({KID: key.public_text()}, site_id="kho-lanh-b")

    verdict = other_site.read(issue(key).text, now=NOW)

    assert verdict is not None
    assert (verdict.accepted, verdict.reason) == (False, "badge_wrong_site")
    assert verdict.id_number == f"{SITE}:NV-004521"
    assert verdict.name == NAME


def test_revoked_badge(key: IssuerKey) -> None:
    revoking = BadgeReader({KID: key.public_text()}, site_id=SITE, revoked=["K7Q2M4XD9TRA"])

    verdict = revoking.read(issue(key).text, now=NOW)
    other = revoking.read(issue(key, badge_id="OTHERBADGE22").text, now=NOW)

    assert verdict is not None and verdict.reason == "badge_revoked"
    assert verdict.credential_id == "K7Q2M4XD9TRA"
    assert other is not None and other.accepted


def test_unknown_key_id_carries_no_identity(reader: BadgeReader) -> None:
    stranger = generate_issuer_key("da-nang-2025")

    verdict = reader.read(issue(stranger).text, now=NOW)

    assert verdict is not None
    assert (verdict.accepted, verdict.reason) == (False, "badge_unknown_key")
    assert (verdict.id_number, verdict.name, verdict.credential_id) == ("", "", "")
    assert verdict.zones == () and verdict.expires_at is None
    assert dict(verdict.details) == {"key_id": "da-nang-2025"}


def test_other_key_under_the_same_key_id_is_a_bad_signature(reader: BadgeReader) -> None:
    impostor = generate_issuer_key(KID)

    verdict = reader.read(issue(impostor).text, now=NOW)

    assert verdict is not None
    assert (verdict.accepted, verdict.reason) == (False, "badge_bad_signature")
    assert (verdict.id_number, verdict.name, verdict.credential_id) == ("", "", "")


def test_tampered_payload_is_a_bad_signature(key: IssuerKey, reader: BadgeReader) -> None:
    cose = cose_bytes(issue(key).text)
    assert cose.count(b"NV-004521") == 1
    tampered = qrg1(cose.replace(b"NV-004521", b"NV-000001"))

    verdict = reader.read(tampered, now=NOW)

    assert verdict is not None and verdict.reason == "badge_bad_signature"
    assert verdict.id_number == ""


def test_tampered_signature_is_a_bad_signature(key: IssuerKey, reader: BadgeReader) -> None:
    cose = bytearray(cose_bytes(issue(key).text))
    cose[-1] ^= 0x01

    verdict = reader.read(qrg1(bytes(cose)), now=NOW)

    assert verdict is not None and verdict.reason == "badge_bad_signature"


@pytest.mark.parametrize(
    "text",
    [
        "QRG1:",
        "QRG1:!!!!",
        "QRG1:abc",
        "QRG1:" + base45.b45encode(b"not zlib at all").decode(),
        "QRG1:" + base45.b45encode(zlib.compress(b"\xff\xfe not cbor")).decode(),
        qrg1(cbor2.dumps([1, 2, 3])),
        qrg1(cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b"", b""]))),
        qrg1(cbor2.dumps(cbor2.CBORTag(18, [b"\xa0", {}, b"\xa0", b"\x00" * 64]))),
    ],
    ids=[
        "empty",
        "not-base45-alphabet",
        "lowercase",
        "not-zlib",
        "not-cbor",
        "untagged-array",
        "empty-parts",
        "empty-headers",
    ],
)
def test_garbage_is_malformed(reader: BadgeReader, text: str) -> None:
    verdict = reader.read(text, now=NOW)

    assert verdict is not None
    assert (verdict.kind, verdict.accepted, verdict.reason) == ("badge", False, "badge_malformed")
    assert verdict.id_number == "" and not verdict.details


@pytest.mark.parametrize("keep", [0.95, 0.75, 0.5, 0.1])
def test_truncated_badge_is_malformed(key: IssuerKey, reader: BadgeReader, keep: float) -> None:
    text = issue(key).text
    truncated = text[: int(len(text) * keep)]

    verdict = reader.read(truncated, now=NOW)

    assert verdict is not None and verdict.reason == "badge_malformed"


@pytest.mark.parametrize(
    "payload",
    [
        claims_map(zones=None),
        claims_map(sub=None),
        claims_map(exp=None),
        claims_map(nbf=None),
        claims_map(bid=""),
        claims_map(exp="2026-06-01"),
        claims_map(exp=True),
        claims_map(exp=10**20),
        claims_map(zones=["kho", 7]),
        claims_map(name=b"bytes"),
        [1, 2],
    ],
    ids=[
        "no-zones",
        "no-subject",
        "no-expiry",
        "no-valid-from",
        "empty-badge-id",
        "text-expiry",
        "bool-expiry",
        "huge-expiry",
        "non-text-zone",
        "bytes-name",
        "not-a-map",
    ],
)
def test_validly_signed_bad_claims_are_malformed(
    key: IssuerKey, reader: BadgeReader, payload: object
) -> None:
    text = qrg1(sign1(key.private_key, cbor2.dumps(payload)))

    verdict = reader.read(text, now=NOW)

    assert verdict is not None and verdict.reason == "badge_malformed"


@pytest.mark.parametrize(
    ("protected", "tag"),
    [
        ({1: -7, 4: KID.encode()}, 18),
        ({1: -8}, 18),
        ({1: -8, 4: KID}, 18),
        ({1: -8, 4: KID.encode(), 3: 0}, 18),
        ({1: -8, 4: b"no spaces allowed"}, 18),
        ({1: -8, 4: KID.encode()}, 98),
    ],
    ids=["es256-alg", "no-kid", "text-kid", "extra-header", "invalid-kid", "cose-sign-tag"],
)
def test_unexpected_cose_envelope_is_malformed(
    key: IssuerKey, reader: BadgeReader, protected: dict[int, object], tag: int
) -> None:
    text = qrg1(sign1(key.private_key, cbor2.dumps(claims_map()), protected=protected, tag=tag))

    verdict = reader.read(text, now=NOW)

    assert verdict is not None and verdict.reason == "badge_malformed"


def test_trailing_data_and_zlib_bombs_are_malformed(key: IssuerKey, reader: BadgeReader) -> None:
    cose = cose_bytes(issue(key).text)
    after_cbor = qrg1(cose + b"\x00")
    after_zlib = "QRG1:" + base45.b45encode(zlib.compress(cose) + b"\x00").decode()
    bomb = "QRG1:" + base45.b45encode(zlib.compress(b"\x00" * 1_000_000)).decode()

    for text in (after_cbor, after_zlib, bomb):
        verdict = reader.read(text, now=NOW)
        assert verdict is not None and verdict.reason == "badge_malformed"


def test_random_corruption_never_raises_nor_accepts(key: IssuerKey, reader: BadgeReader) -> None:
    text = issue(key).text
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
    rng = random.Random(20250601)
    reasons = set()
    for _ in range(300):
        chars = list(text)
        for _ in range(rng.randint(1, 3)):
            position = rng.randrange(len("QRG1:"), len(chars))
            chars[position] = rng.choice(alphabet.replace(chars[position], ""))
        verdict = reader.read("".join(chars), now=NOW)
        assert verdict is not None and not verdict.accepted
        reasons.add(verdict.reason)

    assert reasons <= {"badge_malformed", "badge_bad_signature", "badge_unknown_key"}


@pytest.mark.parametrize(
    ("revoked", "site", "now", "reason"),
    [
        (["K7Q2M4XD9TRA"], "kho-lanh-b", END + timedelta(days=1), "badge_revoked"),
        ([], "kho-lanh-b", END + timedelta(days=1), "badge_wrong_site"),
        ([], "kho-lanh-b", START - timedelta(days=1), "badge_wrong_site"),
    ],
    ids=["revoked-first", "site-before-expiry", "site-before-not-yet-valid"],
)
def test_rule_precedence(
    key: IssuerKey, revoked: list[str], site: str, now: datetime, reason: str
) -> None:
    strict = BadgeReader({KID: key.public_text()}, site_id=site, revoked=revoked)

    verdict = strict.read(issue(key).text, now=now)

    assert verdict is not None and verdict.reason == reason


def test_signature_comes_before_rules_and_structure_before_keys(key: IssuerKey) -> None:
    revoking = BadgeReader({KID: key.public_text()}, site_id="other", revoked=["K7Q2M4XD9TRA"])
    forged = issue(generate_issuer_key(KID)).text
    stranger = generate_issuer_key("nobody").private_key
    no_zones = sign1(stranger, cbor2.dumps(claims_map(zones=None)), protected={1: -8, 4: b"x"})

    forged_verdict = revoking.read(forged, now=NOW)
    no_zones_verdict = revoking.read(qrg1(no_zones), now=NOW)

    assert forged_verdict is not None and forged_verdict.reason == "badge_bad_signature"
    assert no_zones_verdict is not None and no_zones_verdict.reason == "badge_malformed"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "HC1:NCFOXN%TS3DH3ZSUZK+.V0ETD%65NL-AH-R6IOOK.IR9B+9D-1GZ5*LH1TQ-1",
        "qrg1:ABC",
        " QRG1:ABC",
        "QRG2:ABC",
        "001099012345||Nguyễn Văn An|15031999|Nam|Số 12 Phố Huế, Hà Nội|20042021",
        "https://qr.example.vn/menu?ban=12",
    ],
    ids=["empty", "hc1", "lowercase-prefix", "leading-space", "other-version", "cccd", "url"],
)
def test_other_texts_are_not_badges(reader: BadgeReader, text: str) -> None:
    assert reader.read(text, now=NOW) is None


def test_recognize_routes_badges_to_the_badge_reader(key: IssuerKey, reader: BadgeReader) -> None:
    verdict = recognize(issue(key).text, now=NOW, readers=[CccdReader(), reader])

    assert (verdict.kind, verdict.reason) == ("badge", "ok")


def test_public_key_text_fits_the_config_and_both_base64_alphabets_load(key: IssuerKey) -> None:
    config = CredentialsConfig(badge_keys={KID: key.public_text()})
    standard = key.public_text().replace("-", "+").replace("_", "/").rstrip("=")
    text = issue(key).text

    for public in (config.badge_keys[KID], standard):
        verdict = BadgeReader({KID: public}, site_id=SITE).read(text, now=NOW)
        assert verdict is not None and verdict.accepted


@pytest.mark.parametrize(
    "public",
    ["not base64 at all!", "QUJD", "A" * 64, ""],
    ids=["not-base64", "too-short", "too-long", "empty"],
)
def test_bad_configured_key_is_a_config_error(public: str) -> None:
    with pytest.raises(BadgeKeyError, match="site-key") as raised:
        BadgeReader({"site-key": public}, site_id=SITE)

    assert isinstance(raised.value, ConfigError)


def test_key_save_and_load_round_trip(key: IssuerKey, tmp_path: Path) -> None:
    path = tmp_path / "hcm-2025.pem"
    key.save(path)

    loaded = IssuerKey.load(path)
    verdict = BadgeReader({KID: key.public_text()}, site_id=SITE).read(issue(loaded).text, now=NOW)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert json.loads(sidecar(path).read_text()) == {"key_id": KID, "public_key": key.public_text()}
    assert sidecar(path).name == "hcm-2025.pub.json"
    assert (loaded.key_id, loaded.public_text()) == (KID, key.public_text())
    assert verdict is not None and verdict.accepted


def test_key_save_never_overwrites(key: IssuerKey, tmp_path: Path) -> None:
    path = tmp_path / "issuer.pem"
    key.save(path)
    before = path.read_bytes()

    with pytest.raises(BadgeIssueError, match="cannot save"):
        generate_issuer_key(KID).save(path)

    assert path.read_bytes() == before
    assert IssuerKey.load(path).public_text() == key.public_text()


def test_key_load_refuses_a_sidecar_of_another_key(key: IssuerKey, tmp_path: Path) -> None:
    path = tmp_path / "issuer.pem"
    key.save(path)
    other = {"key_id": KID, "public_key": generate_issuer_key(KID).public_text()}
    sidecar(path).write_text(json.dumps(other))

    with pytest.raises(BadgeIssueError, match="another key"):
        IssuerKey.load(path)


def test_key_load_reports_missing_files(tmp_path: Path) -> None:
    with pytest.raises(BadgeIssueError, match="cannot load"):
        IssuerKey.load(tmp_path / "missing.pem")


def test_private_key_is_not_in_repr(key: IssuerKey) -> None:
    assert repr(key) == f"IssuerKey(key_id={KID!r})"


@pytest.mark.parametrize(
    "overrides",
    [
        {"valid_from": datetime(2025, 6, 1, 7, 0)},
        {"valid_until": START},
        {"subject_id": ""},
        {"site_id": ""},
        {"zones": ["kho", ""]},
    ],
    ids=["naive-time", "empty-window", "no-subject", "no-site", "empty-zone"],
)
def test_issue_rejects_bad_claims(key: IssuerKey, overrides: dict[str, object]) -> None:
    with pytest.raises(BadgeIssueError):
        issue(key, **overrides)


@pytest.mark.parametrize("key_id", ["", "has space", "x" * 33, "dấu"])
def test_key_ids_follow_the_config_pattern(key_id: str) -> None:
    with pytest.raises(BadgeIssueError, match="key id"):
        generate_issuer_key(key_id)


def test_badge_qr_scans_with_the_project_decoder(key: IssuerKey, reader: BadgeReader) -> None:
    badge = issue(key, badge_id=None)
    qr = segno.make(badge.text, error="m")
    png = io.BytesIO()
    qr.save(png, kind="png", scale=4)
    png.seek(0)

    texts = make_decoder(DecoderConfig()).decode(to_gray(Image.open(png)))
    verdict = reader.read(texts[0], now=NOW) if texts else None

    # Measured over 200 keys: 310-313 characters, version 10 (57x57) for 9 in 10, else 11.
    assert isinstance(qr.version, int) and qr.version <= 11
    assert qr.mode == "alphanumeric"
    assert texts == [badge.text]
    assert verdict is not None and verdict.accepted
