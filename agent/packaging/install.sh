#!/bin/sh
# Install (or upgrade) the fleet device agent as a systemd service. Run as root from a checkout:
#   sudo sh agent/packaging/install.sh
# Installs into /opt/fleet-agent (a venv with the agent's run-time dependencies only), creates the
# fleet-agent system user, /etc/fleet-agent/agent.env (kept if present) and the systemd unit.
set -eu
SRC=$(cd "$(dirname "$0")/../.." && pwd)
PREFIX=/opt/fleet-agent
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root (sudo)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "install.sh: python3 (>= 3.11) is required" >&2; exit 1; }
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "install.sh: python3 >= 3.11 is required" >&2; exit 1; }
id fleet-agent >/dev/null 2>&1 \
  || useradd --system --home-dir /var/lib/fleet-agent --shell /usr/sbin/nologin fleet-agent
python3 -m venv "$PREFIX"
"$PREFIX/bin/pip" install --quiet --upgrade pip
"$PREFIX/bin/pip" install --quiet -r "$SRC/agent/packaging/requirements.txt"
"$PREFIX/bin/pip" install --quiet --no-deps "$SRC"
mkdir -p "$PREFIX/docs" && cp "$SRC/docs/agent.md" "$PREFIX/docs/agent.md"
install -d -m 0750 -o root -g fleet-agent /etc/fleet-agent
[ -f /etc/fleet-agent/agent.env ] \
  || install -m 0640 -o root -g fleet-agent "$SRC/agent/packaging/agent.env.example" /etc/fleet-agent/agent.env
install -m 0644 "$SRC/agent/packaging/fleet-agent.service" /etc/systemd/system/fleet-agent.service
systemctl daemon-reload
echo "installed. Edit /etc/fleet-agent/agent.env, then: systemctl enable --now fleet-agent"
