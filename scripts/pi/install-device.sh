#!/usr/bin/env bash
# Install qrgate as a gate device on Raspberry Pi OS Bookworm (Pi 4/5, Zero 2 W).
# Run from a checkout of qrgate:  sudo scripts/pi/install-device.sh [BUNDLE_DIR]
# BUNDLE_DIR holds device.json and its secrets (from provisioning); without it the
# unit is installed but not started.
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "run as root (sudo)" >&2; exit 1; }
src=$(cd "$(dirname "$0")/../.." && pwd)
bundle=${1:-}

apt-get update -qq
# python3-picamera2 comes from the Raspberry Pi archive; the venv sees it through
# --system-site-packages, as libcamera's bindings cannot be installed with pip.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    python3-venv python3-picamera2 python3-libcamera libzbar0 python3-lgpio

id qrgate >/dev/null 2>&1 || useradd --system --home /var/lib/qrgate --shell /usr/sbin/nologin qrgate
for group in gpio video; do getent group "$group" >/dev/null && usermod -aG "$group" qrgate; done
install -d -o qrgate -g qrgate -m 0750 /var/lib/qrgate
install -d -m 0755 /opt/qrgate /etc/qrgate

if [ ! -x /opt/qrgate/venv/bin/python ]; then
    python3 -m venv --system-site-packages /opt/qrgate/venv
fi
/opt/qrgate/venv/bin/pip install -q --upgrade pip
/opt/qrgate/venv/bin/pip install -q "$src"

if [ -n "$bundle" ]; then
    install -m 0640 -g qrgate "$bundle"/device.json /etc/qrgate/device.json
    install -d -m 0750 -g qrgate /etc/qrgate/secrets
    install -m 0640 -g qrgate "$bundle"/secrets/* /etc/qrgate/secrets/
fi

install -m 0644 "$src/scripts/pi/qrgate-device.service" /etc/systemd/system/qrgate-device.service
systemctl daemon-reload
systemctl enable qrgate-device.service
if [ -f /etc/qrgate/device.json ]; then
    systemctl restart qrgate-device.service
    echo "qrgate-device started; follow it with: journalctl -fu qrgate-device"
else
    echo "installed; put the device config at /etc/qrgate/device.json, then: systemctl start qrgate-device"
fi
