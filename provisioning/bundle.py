"""A device bundle: everything one Pi needs, as a folder or tarball for its boot partition.

::

    qrgate-<id>/
        device.json          bootstrap config: identity, broker address, file names
        ca.pem               the site CA (the device checks the broker's certificate)
        client.pem           auth "cert": the device certificate (CN = device id) ...
        client.key           ... and its private key
        broker.password      auth "password": the broker password instead
        subject.key          the province key of the pseudonymous subject hash
        wifi.nmconnection    optional NetworkManager Wi-Fi profile
        INSTALL.txt          the one command to run on the Pi

On the Pi, ``sudo scripts/pi/install-device.sh /boot/firmware/qrgate-<id>`` (or
the ``.tar.gz``) copies it to ``/etc/qrgate`` and starts the service. Relative
paths in ``device.json`` are taken from its folder, so the same file works in
the bundle and after installation.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import tarfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from broker.secrets import TlsFiles
from device.config import DeviceConfig
from provisioning.devices import active_record, read_device_config
from provisioning.errors import ProvisioningError
from provisioning.layout import Site
from provisioning.manifest import load_manifest

logger = logging.getLogger(__name__)

Auth = Literal["cert", "password"]
STATE_DIR = Path("/var/lib/qrgate")
_PRIVATE = ("client.key", "broker.password", "subject.key", "wifi.nmconnection")
_SSID_BAD = re.compile(r"[\x00-\x1f\x7f]")


class BundleError(ProvisioningError):
    """A bundle cannot be made as asked (no TLS listener, bad Wi-Fi settings, ...)."""


@dataclass(frozen=True)
class WifiProfile:
    """A WPA-PSK network the Pi joins; the passphrase comes from a file, never argv."""

    ssid: str
    psk: str

    def __post_init__(self) -> None:
        if not 1 <= len(self.ssid.encode()) <= 32 or _SSID_BAD.search(self.ssid):
            raise BundleError(f"Wi-Fi SSID {self.ssid!r}: 1-32 bytes, no control characters")
        if not 8 <= len(self.psk) <= 63 or not all(" " <= c <= "~" for c in self.psk):
            raise BundleError("Wi-Fi passphrase: 8-63 printable ASCII characters")

    def keyfile(self) -> str:
        """The profile in NetworkManager's keyfile format."""
        ident = uuid.uuid5(uuid.NAMESPACE_DNS, f"qrgate-wifi.{self.ssid}")
        return "\n".join(
            [
                "[connection]",
                "id=qrgate-wifi",
                f"uuid={ident}",
                "type=wifi",
                "autoconnect=true",
                "autoconnect-priority=10",
                "",
                "[wifi]",
                "mode=infrastructure",
                f"ssid={self.ssid}",
                "",
                "[wifi-security]",
                "key-mgmt=wpa-psk",
                f"psk={self.psk}",
                "",
                "[ipv4]",
                "method=auto",
                "",
                "[ipv6]",
                "method=auto",
                "",
            ]
        )


def read_wifi(ssid: str, psk_file: Path) -> WifiProfile:
    try:
        psk = psk_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise BundleError(f"cannot read Wi-Fi passphrase file {psk_file}: {exc}") from None
    return WifiProfile(ssid, psk)


def bundle_files(
    site: Site, device_id: str, *, auth: Auth = "cert", wifi: WifiProfile | None = None
) -> dict[str, bytes]:
    """The bundle's files by name (see the module docstring)."""
    manifest = load_manifest(site.directory)
    active_record(manifest, device_id)
    if auth == "cert" and manifest.tls_port is None:
        raise BundleError(
            f"site {manifest.site_id} has no TLS listener: use --auth password, or create "
            "the site with --tls-port"
        )
    config = _bundle_config(read_device_config(site.device_config(device_id)), auth)
    config = config.model_copy(
        update={
            "broker": config.broker.model_copy(
                update={
                    "host": manifest.device_host,
                    "port": manifest.tls_port if auth == "cert" else manifest.port,
                }
            )
        }
    )
    files = {
        "device.json": (config.model_dump_json(indent=2) + "\n").encode(),
        "ca.pem": site.ca_cert.read_bytes(),
        "subject.key": site.subject_key.read_bytes(),
        "INSTALL.txt": _install_text(device_id).encode(),
    }
    if auth == "cert":
        files["client.pem"] = site.device_cert(device_id).read_bytes()
        files["client.key"] = site.device_key(device_id).read_bytes()
    else:
        files["broker.password"] = site.password_file(device_id).read_bytes()
    if wifi is not None:
        files["wifi.nmconnection"] = wifi.keyfile().encode()
    return files


def _bundle_config(config: DeviceConfig, auth: Auth) -> DeviceConfig:
    if auth == "cert":
        tls = TlsFiles(
            ca_file=Path("ca.pem"), cert_file=Path("client.pem"), key_file=Path("client.key")
        )
        broker = config.broker.model_copy(update={"password_file": None, "tls": tls})
    else:
        broker = config.broker.model_copy(
            update={"password_file": Path("broker.password"), "tls": None}
        )
    return config.model_copy(
        update={
            "broker": broker,
            "outbox_path": STATE_DIR / "outbox.db",
            "state_dir": STATE_DIR,
            "subject_key_file": Path("subject.key"),
        }
    )


def _install_text(device_id: str) -> str:
    return (
        f"qrgate device bundle for {device_id}\n\n"
        "On the Pi, from a checkout of qrgate:\n\n"
        f"    sudo scripts/pi/install-device.sh /boot/firmware/qrgate-{device_id}\n\n"
        "then follow it with: journalctl -fu qrgate-device\n"
    )


def write_bundle(
    site: Site,
    device_id: str,
    out: Path,
    *,
    auth: Auth = "cert",
    wifi: WifiProfile | None = None,
    tarball: bool = False,
) -> Path:
    """Write ``qrgate-<id>/`` (or ``qrgate-<id>.tar.gz``) under ``out``; returns its path."""
    files = bundle_files(site, device_id, auth=auth, wifi=wifi)
    out.mkdir(parents=True, exist_ok=True)
    name = f"qrgate-{device_id}"
    path = out / (f"{name}.tar.gz" if tarball else name)
    if tarball:
        _write_tar(path, name, files)
    else:
        _write_folder(path, files)
    logger.info("bundle of %s (%s login) written to %s", device_id, auth, path)
    return path


def _write_folder(path: Path, files: dict[str, bytes]) -> None:
    if path.exists():
        shutil.rmtree(path)  # a bundle is generated whole; stale files must not linger
    path.mkdir(mode=0o700)
    for name, data in files.items():
        target = path / name
        target.write_bytes(data)
        target.chmod(0o600 if name in _PRIVATE else 0o644)


def _write_tar(path: Path, top: str, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo(top)
        folder.type, folder.mode = tarfile.DIRTYPE, 0o700
        tar.addfile(folder)
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size, info.mode = len(data), 0o600 if name in _PRIVATE else 0o644
            tar.addfile(info, io.BytesIO(data))
    path.chmod(0o600)
