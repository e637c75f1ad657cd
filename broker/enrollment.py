"""Enrollment by QR code: the contract between provisioning, the gateway and a new device.

A technician shows an unconfigured device a QR code (:class:`EnrollmentCode`,
``QRGE1:`` + compact JSON) holding the broker address, the site's enrollment
login, the device id and a one-time token. The device logs in as the
enrollment user with the request id as its client id, and asks::

    qrgate/v1/enroll/<request_id>/request   device -> gateway  QoS 1  EnrollRequest
    qrgate/v1/enroll/<request_id>/reply     gateway -> device  QoS 1  EnrollReply

The token never travels and is never stored: the request names it by
:func:`token_id` (a keyed BLAKE2b hash, which is also all the gateway keeps),
and the device's bundle (config and secrets, :class:`EnrollmentBundle`) is
stored and sent sealed with a key derived from the token (:func:`seal_bundle`,
NaCl SecretBox). Anyone who reads a reply, or the gateway database, learns no
credential; the device trusts a bundle because only the token opens it.

The enrollment login is printed on every code, so it is as good as public; the
ACL (:func:`acl_lines`) confines it to the request/reply pair named by its own
client id (``%c``), and pins no device topic to it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from typing import Annotated, Literal

import nacl.exceptions
import nacl.hash
import nacl.secret
import nacl.utils
from nacl.encoding import RawEncoder
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from broker.errors import BadMessage, BadTopic, BrokerError
from broker.messages import MAX_CONFIG_BYTES, DeviceId, _decode, encode
from broker.settings import DeviceSettings, SubjectKeyText
from broker.topics import ROOT

ENROLL_PREFIX = f"{ROOT}/enroll"
# The broker user every unconfigured device logs in as; never a device id in practice,
# and refused as one by provisioning.
ENROLL_USER = "qrgate-enroll"
CODE_PREFIX = "QRGE1:"
TOKEN_BYTES = 16  # 128 bits
MAX_REQUEST_BYTES = 1024
# A sealed bundle may carry a trust list; the reply stays under the broker's packet size.
MAX_REPLY_BYTES = MAX_CONFIG_BYTES
# A QR code holds at most ~2.3 KB of bytes at error level M; ours are ~250.
MAX_CODE_CHARS = 1024

_REQUEST_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_ID_PERSON = b"qrgate-enroll-id"  # BLAKE2b personalisation: at most 16 bytes
_KEY_PERSON = b"qrgate-enrollkey"

RequestId = Annotated[str, StringConstraints(pattern=_REQUEST_ID_RE.pattern)]
TokenText = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{22}$")]
TokenId = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Host = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9.:\[\]-]{1,253}$")]

RefusalReason = Literal[
    "token_unknown",
    "token_expired",
    "token_used",
    "device_mismatch",
    "too_large",
    "malformed_json",
    "schema",
    "busy",
]
REFUSAL_TEXT: dict[str, str] = {
    "token_unknown": "this enrollment code is not known to the gateway",
    "token_expired": "this enrollment code has expired; ask for a new one",
    "token_used": "this enrollment code was already used; ask for a new one",
    "device_mismatch": "this enrollment code was made for another device",
    "too_large": "the request is too large",
    "malformed_json": "the request is not JSON",
    "schema": "the request does not fit the enrollment request model",
    "busy": "the gateway has too many enrollment requests waiting; try again",
}


class EnrollmentError(BrokerError):
    """An enrollment code, request, reply or bundle is invalid."""


class BadEnrollmentCode(EnrollmentError):
    """A scanned text is not a valid enrollment code."""


class BundleUnreadable(EnrollmentError):
    """A sealed bundle does not open with the token, or is not a valid bundle."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnrollmentCode(_Model):
    """What the enrollment QR code holds (the token is the secret; the login is not)."""

    v: Literal[1] = 1
    host: Host = Field(description="Broker host the device reaches (not 0.0.0.0).")
    port: int = Field(ge=1, le=65535)
    user: Annotated[str, StringConstraints(min_length=1, max_length=64)] = ENROLL_USER
    password: Annotated[str, StringConstraints(min_length=8, max_length=128)]
    device: DeviceId
    token: TokenText
    expires: AwareDatetime = Field(description="When the gateway stops accepting the token.")

    def text(self) -> str:
        """The QR payload: prefix and compact JSON."""
        return CODE_PREFIX + self.model_dump_json()


class EnrollRequest(_Model):
    """A device asks for its bundle; the token is named by its id, never sent."""

    v: Literal[1] = 1
    device_id: DeviceId
    token_id: TokenId
    firmware: Annotated[str, StringConstraints(max_length=32)] = ""


class EnrollReply(_Model):
    """The gateway's answer: the sealed bundle, or a refusal with its reason."""

    v: Literal[1] = 1
    ok: bool
    reason: RefusalReason | None = None
    detail: Annotated[str, StringConstraints(max_length=300)] = ""
    bundle: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]+={0,2}$")] | None = None

    @model_validator(mode="after")
    def _either(self) -> EnrollReply:
        if self.ok != (self.bundle is not None) or self.ok == (self.reason is not None):
            raise ValueError("a reply has a bundle and no reason if ok, else a reason only")
        return self


Pem = Annotated[str, StringConstraints(min_length=64, max_length=16384)]


class BundleTls(_Model):
    """TLS to the broker for the enrolled device: the site CA, and its certificate and key."""

    ca_pem: Pem
    cert_pem: Pem | None = None
    key_pem: Pem | None = None

    @model_validator(mode="after")
    def _pair(self) -> BundleTls:
        if (self.cert_pem is None) != (self.key_pem is None):
            raise ValueError("cert_pem and key_pem go together")
        return self


class EnrollmentBundle(_Model):
    """What a device needs to run: identity, broker login, subject key and settings."""

    v: Literal[1] = 1
    device_id: DeviceId
    site_id: DeviceId
    host: Host
    port: int = Field(ge=1, le=65535)
    password: Annotated[str, StringConstraints(max_length=128)] = Field(
        "", description="Broker password; empty when the TLS certificate is the login."
    )
    tls: BundleTls | None = None
    subject_key: SubjectKeyText
    settings: DeviceSettings

    @model_validator(mode="after")
    def _has_login(self) -> EnrollmentBundle:
        if not self.password and (self.tls is None or self.tls.cert_pem is None):
            raise ValueError("a bundle needs a broker password or a TLS client certificate")
        return self


def new_token() -> str:
    """A fresh one-time token: 128 random bits, url-safe base64 without padding."""
    return base64.urlsafe_b64encode(secrets.token_bytes(TOKEN_BYTES)).rstrip(b"=").decode()


def _token_bytes(token: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(token + "==")
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != TOKEN_BYTES:
        raise EnrollmentError("an enrollment token is 22 url-safe base64 characters")
    return raw


def token_id(token: str) -> str:
    """The public name of a token: what the request carries and the gateway stores."""
    raw = nacl.hash.blake2b(_token_bytes(token), digest_size=32, person=_ID_PERSON)
    return raw.decode("ascii")  # HexEncoder by default


def _bundle_key(token: str) -> bytes:
    # A different personalisation: the token id reveals nothing about the key.
    key: bytes = nacl.hash.blake2b(
        _token_bytes(token), digest_size=32, person=_KEY_PERSON, encoder=RawEncoder
    )
    return key


def seal_bundle(bundle: EnrollmentBundle, token: str) -> str:
    """The bundle encrypted and authenticated with the token's key (url-safe base64)."""
    box = nacl.secret.SecretBox(_bundle_key(token))
    sealed = base64.urlsafe_b64encode(bytes(box.encrypt(encode(bundle, cap=MAX_CONFIG_BYTES))))
    text = sealed.decode("ascii")
    if len(text) > MAX_REPLY_BYTES - 1024:
        raise EnrollmentError(
            f"sealed bundle is {len(text)} bytes, over the {MAX_REPLY_BYTES - 1024} byte cap "
            "of an enrollment reply: push large settings (trust lists) after enrollment"
        )
    return text


def open_bundle(sealed: str, token: str) -> EnrollmentBundle:
    """Decrypt and validate a sealed bundle; raises :class:`BundleUnreadable`."""
    box = nacl.secret.SecretBox(_bundle_key(token))
    try:
        plain = box.decrypt(base64.urlsafe_b64decode(sealed))
    except (binascii.Error, ValueError, nacl.exceptions.CryptoError):
        raise BundleUnreadable("the bundle does not open with this token") from None
    try:
        return _decode(EnrollmentBundle, plain, cap=MAX_CONFIG_BYTES)
    except BadMessage as exc:
        raise BundleUnreadable(f"the bundle is not valid: {exc}") from None


def parse_code(text: str) -> EnrollmentCode:
    """The enrollment code in a scanned text; raises :class:`BadEnrollmentCode`."""
    if not text.startswith(CODE_PREFIX):
        raise BadEnrollmentCode(f"not an enrollment code (no {CODE_PREFIX} prefix)")
    if len(text) > MAX_CODE_CHARS:
        raise BadEnrollmentCode(f"enrollment code is over {MAX_CODE_CHARS} characters")
    try:
        data = json.loads(text[len(CODE_PREFIX) :])
        return EnrollmentCode.model_validate(data)
    except json.JSONDecodeError as exc:
        raise BadEnrollmentCode(f"enrollment code is not JSON: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise BadEnrollmentCode(f"enrollment code: {where}: {first['msg']}") from None


def is_code(text: str) -> bool:
    """Whether a scanned text claims to be an enrollment code."""
    return text.startswith(CODE_PREFIX)


# -- topics ------------------------------------------------------------------


def check_request_id(request_id: str) -> str:
    """Return ``request_id`` if it is 32 lower-case hex digits, else raise BadTopic."""
    if not _REQUEST_ID_RE.fullmatch(request_id):
        raise BadTopic(f"invalid enrollment request id {request_id!r}: use 32 hex digits")
    return request_id


def new_request_id() -> str:
    """A fresh request id; the device also uses it as its MQTT client id."""
    return secrets.token_hex(16)


def request_topic(request_id: str) -> str:
    return f"{ENROLL_PREFIX}/{check_request_id(request_id)}/request"


def reply_topic(request_id: str) -> str:
    return f"{ENROLL_PREFIX}/{check_request_id(request_id)}/reply"


ALL_REQUESTS = f"{ENROLL_PREFIX}/+/request"


def parse_request_topic(topic: str) -> str:
    """The request id of a request topic; raises BadTopic."""
    prefix, suffix = ENROLL_PREFIX + "/", "/request"
    middle = topic[len(prefix) : -len(suffix)] if len(topic) > len(prefix + suffix) else ""
    if not (topic.startswith(prefix) and topic.endswith(suffix)) or "/" in middle:
        raise BadTopic(f"topic {topic!r} is not {prefix}<request_id>{suffix}")
    return check_request_id(middle)


def is_enrollment_topic(topic: str) -> bool:
    return topic.startswith(ENROLL_PREFIX + "/")


def acl_patterns() -> list[str]:
    """ACL ``pattern`` lines of the enrollment topics, for every user.

    Patterns apply to every user, so any client may write the request and read
    the reply named by its own client id, and nothing else here: a client
    cannot read another request's reply, even with a wildcard subscription.
    """
    return [
        "# Enrollment: a client reaches only the request/reply pair of its own client id.",
        f"pattern write {ENROLL_PREFIX}/%c/request",
        f"pattern read {ENROLL_PREFIX}/%c/reply",
    ]


def gateway_acl_topics() -> list[str]:
    """ACL ``topic`` lines for a gateway user: read every request, write every reply."""
    return [f"topic read {ALL_REQUESTS}", f"topic write {ENROLL_PREFIX}/+/reply"]


# -- payloads ----------------------------------------------------------------


def decode_request(payload: bytes) -> EnrollRequest:
    """Decode a request; raises a BadMessage subclass whose ``reason`` goes in the reply."""
    return _decode(EnrollRequest, payload, cap=MAX_REQUEST_BYTES)


def decode_reply(payload: bytes) -> EnrollReply:
    """Decode a reply from the gateway."""
    return _decode(EnrollReply, payload, cap=MAX_REPLY_BYTES)


def encode_reply(reply: EnrollReply) -> bytes:
    return encode(reply, cap=MAX_REPLY_BYTES)


def refusal(reason: RefusalReason, detail: str = "") -> EnrollReply:
    """A refusal reply; ``detail`` defaults to the reason's sentence."""
    return EnrollReply(ok=False, reason=reason, detail=(detail or REFUSAL_TEXT[reason])[:300])
