"""Worker badges of a site: issue them from a worker CSV, print them, and revoke them.

Files in the site folder (see :mod:`provisioning.site`)::

    secrets/badge-issuer.key        the site's issuer key (made with the site), 0600
    secrets/badge-issuer.pub.json   its key id and public key
    badges/issued.csv               every badge issued: id, worker, validity, key id
    badges/revoked.csv              every badge revoked: id, worker, reason, when

Issuing makes sure every device config trusts the issuer's public key
(``credentials.badge_keys``), and revoking adds the badge id to
``policy.revoked_badges`` of every device config, so the gates refuse it
(``badge_revoked``). Changed device configs are stored as the devices' new
desired configs in the gateway's database (when the site has one), which the
gateway publishes to the gates.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ValidationError

from device.config import DeviceConfig
from provisioning.badges import Badge, IssuerKey, issue_badge
from provisioning.badgesheet import BadgeCard, write_badge_sheet
from provisioning.errors import ProvisioningError
from provisioning.layout import open_site
from provisioning.manifest import load_manifest
from provisioning.printing import clean_text, write_file
from provisioning.siteinfo import SiteInfo, read_site
from provisioning.sync import register_at_gateway
from provisioning.workercsv import Worker, read_workers

logger = logging.getLogger(__name__)

ISSUED, REVOKED = "issued.csv", "revoked.csv"
ISSUED_FIELDS = (
    "badge_id",
    "worker_id",
    "name",
    "valid_from",
    "valid_until",
    "issued_at",
    "key_id",
)
REVOKED_FIELDS = ("badge_id", "worker_id", "reason", "revoked_at")
MAX_REASON = 200


class BadgeOfficeError(ProvisioningError):
    """Badges cannot be issued or revoked at this site (device configs, key, records)."""


class BadgeNotIssued(BadgeOfficeError):
    """A badge id to revoke is not in the site's record of issued badges."""


@dataclass(frozen=True, slots=True)
class IssuedBadges:
    """The outcome of issuing: the badges, the files written, the device configs changed."""

    badges: tuple[Badge, ...]
    sheet: Path
    listing: Path
    devices_updated: int
    desired_stored: int | None


@dataclass(frozen=True, slots=True)
class Revocation:
    """The outcome of revoking; ``devices_updated`` 0 means every gate already had it.

    ``desired_stored`` is how many desired configs the gateway database got (None: no
    database yet).
    """

    badge_id: str
    worker_id: str
    devices_updated: int
    desired_stored: int | None


def issue_for_workers(
    site_dir: Path,
    workers_csv: Path,
    sheet: Path,
    *,
    key_path: Path | None = None,
    now: datetime | None = None,
) -> IssuedBadges:
    """Issue a badge to every worker of the CSV, print the sheet, and record them.

    Nothing is issued if any row is wrong (WorkerCsvError lists them all).
    Beside ``sheet`` a CSV of the same name lists the badge ids and expiries.
    """
    if sheet.suffix.lower() != ".pdf":
        raise BadgeOfficeError(f"{sheet}: the badge sheet must be a .pdf file")
    site = read_site(site_dir)
    zone = _time_zone(site)
    now = now or datetime.now(UTC)
    workers = read_workers(workers_csv, today=now.astimezone(zone).date(), zones=site.zones)
    configs = _device_configs(site)
    key = _issuer_key(site, key_path)
    trusting = {d: _trusting(site, d, c, key) for d, c in configs.items()}
    badges = [_issue(key, site.site_id, zone, worker, now) for worker in workers]
    write_badge_sheet(sheet, site.name, [_card(w, b) for w, b in zip(workers, badges, strict=True)])
    rows = [_issued_row(b, zone) for b in badges]
    listing = sheet.with_suffix(".csv")
    write_file(listing, _csv_bytes(ISSUED_FIELDS, rows, header=True))
    _append_records(site.badges / ISSUED, ISSUED_FIELDS, rows)
    changed = {d: c for d, c in trusting.items() if c != configs[d]}
    desired = _save_device_configs(site, changed)
    logger.info("issued %d badges at %s under key %s", len(badges), site.site_id, key.key_id)
    return IssuedBadges(tuple(badges), sheet, listing, len(changed), desired)


def revoke_badge(
    site_dir: Path, badge_id: str, reason: str, *, now: datetime | None = None
) -> Revocation:
    """Put an issued badge on every gate's revoked list and record why.

    Every device config gets every badge revoked so far, so running this again
    also brings a device added since the last revocation in line.
    """
    site = read_site(site_dir)
    badge_id, reason = badge_id.strip().upper(), clean_text(reason)
    if not reason or len(reason) > MAX_REASON:
        raise BadgeOfficeError(f"the reason must be 1-{MAX_REASON} characters, got {len(reason)}")
    issued = {row["badge_id"]: row for row in _read_records(site.badges / ISSUED)}
    if badge_id not in issued:
        raise BadgeNotIssued(
            f"badge {badge_id!r} was not issued at site {site.site_id}: "
            f"it is not in {site.badges / ISSUED}"
        )
    recorded = [row["badge_id"] for row in _read_records(site.badges / REVOKED)]
    wanted = [*dict.fromkeys([*recorded, badge_id])]
    changed = {
        device_id: _revoking(config, wanted)
        for device_id, config in _device_configs(site).items()
        if not set(wanted) <= set(config.policy.revoked_badges)
    }
    desired = _save_device_configs(site, changed)
    if badge_id not in recorded:
        at = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0).isoformat()
        row = {"badge_id": badge_id, "worker_id": issued[badge_id]["worker_id"], "reason": reason}
        _append_records(site.badges / REVOKED, REVOKED_FIELDS, [{**row, "revoked_at": at}])
    logger.info("badge %s revoked at %s: %d device configs", badge_id, site.site_id, len(changed))
    return Revocation(badge_id, issued[badge_id]["worker_id"], len(changed), desired)


def _time_zone(site: SiteInfo) -> ZoneInfo:
    try:
        return ZoneInfo(site.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadgeOfficeError(
            f"time zone {site.timezone!r} of {site.directory / 'gateway' / 'gateway.json'} "
            "is not an IANA time zone such as Asia/Ho_Chi_Minh"
        ) from None


def _issuer_key(site: SiteInfo, key_path: Path | None) -> IssuerKey:
    """The given key, else the site's own (made with the site)."""
    return IssuerKey.load(key_path or site.badge_key)


def _issue(key: IssuerKey, site_id: str, zone: ZoneInfo, worker: Worker, now: datetime) -> Badge:
    return issue_badge(
        key,
        subject_id=worker.worker_id,
        name=worker.name,
        site_id=site_id,
        zones=worker.zones,
        valid_from=_start_of(worker.valid_from, zone),
        # Valid through the whole last day, in the site's time.
        valid_until=_start_of(worker.valid_until + timedelta(days=1), zone),
        issued_at=now,
    )


def _start_of(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone)


def _card(worker: Worker, badge: Badge) -> BadgeCard:
    return BadgeCard(
        text=badge.text,
        badge_id=badge.claims.badge_id,
        name=worker.name,
        worker_id=worker.worker_id,
        department=worker.department,
        last_day=worker.valid_until,
        zones=worker.zones,
    )


def _issued_row(badge: Badge, zone: ZoneInfo) -> dict[str, str]:
    claims = badge.claims
    return {
        "badge_id": claims.badge_id,
        "worker_id": claims.subject_id,
        "name": claims.name,
        "valid_from": claims.valid_from.astimezone(zone).isoformat(),
        "valid_until": claims.valid_until.astimezone(zone).isoformat(),
        "issued_at": claims.issued_at.isoformat(),
        "key_id": badge.key_id,
    }


def _device_configs(site: SiteInfo) -> dict[str, DeviceConfig]:
    """Every device's config as written (paths unresolved); all read before any is changed."""
    configs = {}
    for device in site.devices:
        path = site.device_config(device.device_id)
        try:
            configs[device.device_id] = DeviceConfig.model_validate_json(path.read_bytes())
        except (OSError, ValidationError) as exc:
            raise BadgeOfficeError(f"cannot read device config {path}: {exc}") from None
    return configs


def _trusting(site: SiteInfo, device_id: str, config: DeviceConfig, key: IssuerKey) -> DeviceConfig:
    keys = config.credentials.badge_keys
    known = keys.get(key.key_id)
    if known == key.public_text():
        return config
    if known is not None:
        raise BadgeOfficeError(
            f"{site.device_config(device_id)} trusts another key under the id {key.key_id!r}: "
            "badges signed now would fail there"
        )
    return _changed(config, "credentials", badge_keys={**keys, key.key_id: key.public_text()})


def _revoking(config: DeviceConfig, badge_ids: list[str]) -> DeviceConfig:
    revoked = [*dict.fromkeys([*config.policy.revoked_badges, *badge_ids])]
    return _changed(config, "policy", revoked_badges=revoked)


def _changed(config: DeviceConfig, part: str, **update: object) -> DeviceConfig:
    section = getattr(config, part).model_copy(update=update)
    # Validated again: a copy with an update skips the field limits.
    return DeviceConfig.model_validate({**config.model_dump(), part: section.model_dump()})


def _save_device_configs(site: SiteInfo, configs: dict[str, DeviceConfig]) -> int | None:
    """Write changed device configs, then store them as desired configs at the gateway.

    Returns how many desired configs were stored, None for a site whose gateway
    database does not exist yet (it gets them when the site is registered).
    """
    for device_id, config in configs.items():
        text = config.model_dump_json(indent=2) + "\n"
        write_file(site.device_config(device_id), text.encode("utf-8"))
    if not site.database.exists():
        return None
    return register_at_gateway(open_site(site.directory), load_manifest(site.directory))


def revoked_badge_ids(site_dir: Path) -> list[str]:
    """Every badge revoked at the site so far, oldest first (for a new device's config)."""
    rows = _read_records(site_dir / "badges" / REVOKED)
    return [*dict.fromkeys(r["badge_id"] for r in rows if r.get("badge_id"))]


def _read_records(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    try:
        with path.open(encoding="utf-8", newline="") as file:
            return list(csv.DictReader(file))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise BadgeOfficeError(f"cannot read {path}: {exc}") from None


def _append_records(path: Path, fields: tuple[str, ...], rows: Iterable[dict[str, str]]) -> None:
    data = _csv_bytes(fields, rows, header=not path.exists())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab") as file:
            file.write(data)
    except OSError as exc:
        raise BadgeOfficeError(f"cannot write {path}: {exc}") from None


def _csv_bytes(fields: tuple[str, ...], rows: Iterable[dict[str, str]], *, header: bool) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")
