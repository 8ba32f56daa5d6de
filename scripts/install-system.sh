#!/usr/bin/env bash
# Install the Debian packages the emulated range needs, when missing.
# As root: installs them. Otherwise: says what is missing and how to fix it;
# the simulator and its tests work without them.
set -euo pipefail

PACKAGES=(
  iproute2 nftables iptables iputils-ping bridge-utils procps
  net-tools # Mininet's Python code configures interfaces with ifconfig
  mininet   # for mnexec; installed without recommends (no Open vSwitch)
  nmap      # a real scanner that is not ours, for sensor tests
  docker.io # container hosts; its dockerd is started by us, without iptables
  chromium chromium-driver # a real browser for the web view's test (no downloads)
  wireshark-common # dumpcap, for drill --pcap (pcapng rings of the subnet bridges)
)

missing=()
for package in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "note: system packages missing: ${missing[*]}" >&2
  echo "note: run 'sudo make setup' to install them; until then emulation is unavailable (the simulator works)" >&2
  exit 0
fi

echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
