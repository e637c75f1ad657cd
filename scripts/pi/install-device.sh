#!/usr/bin/env bash
# Install qrgate as a gate device on Raspberry Pi OS Bookworm (Pi 4/5, Zero 2 W).
# Run from a checkout of qrgate:  sudo scripts/pi/install-device.sh [BUNDLE]
# BUNDLE is a device bundle from `python -m provisioning bundle`: the folder
# qrgate-<id>/ (e.g. copied to /boot/firmware) or its .tar.gz. It holds
# device.json, ca.pem, client.pem + client.key or broker.password, subject.key
# and optionally wifi.nmconnection. Without BUNDLE the unit is installed but
# not started.
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "run as root (sudo)" >&2; exit 1; }
src=$(cd "$(dirname "$0")/../.." && pwd)
bundle=${1:-}

if [ -n "$bundle" ]; then
    if [ -f "$bundle" ]; then
        unpacked=$(mktemp -d)
        trap 'rm -rf "$unpacked"' EXIT
        tar -xzf "$bundle" -C "$unpacked"
        bundle=$(find "$unpacked" -mindepth 1 -maxdepth 1 -type d | head -n 1)
    fi
    [ -f "$bundle/device.json" ] || { echo "$bundle: no device.json: not a device bundle" >&2; exit 1; }
fi

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
    # Relative paths in device.json are taken from its folder: everything goes beside it.
    install -m 0640 -g qrgate "$bundle"/device.json /etc/qrgate/device.json
    install -m 0644 "$bundle"/ca.pem /etc/qrgate/ca.pem
    for secret in client.key broker.password subject.key; do
        if [ -f "$bundle/$secret" ]; then
            install -m 0640 -g qrgate "$bundle/$secret" "/etc/qrgate/$secret"
        fi
    done
    if [ -f "$bundle/client.pem" ]; then
        install -m 0644 "$bundle"/client.pem /etc/qrgate/client.pem
    fi
    if [ -f "$bundle/wifi.nmconnection" ]; then
        install -m 0600 "$bundle"/wifi.nmconnection \
            /etc/NetworkManager/system-connections/qrgate-wifi.nmconnection
        nmcli connection reload && nmcli connection up qrgate-wifi || \
            echo "Wi-Fi profile installed; it connects when the network is in range" >&2
    fi
    case "$bundle" in
        /boot/*) echo "note: the bundle's keys are still on the boot partition; delete $bundle" >&2 ;;
    esac
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
