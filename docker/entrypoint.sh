#!/usr/bin/env bash
# Container entrypoint.
#   hvdat-entrypoint hvdat train ...   run an hvdat command (the primary node)
#   hvdat-entrypoint worker            a worker node: sshd on $HVDAT_SSH_PORT, public-key login only, then wait
#   hvdat-entrypoint CMD ...           anything else runs as given
set -euo pipefail

worker() {
  local port=${HVDAT_SSH_PORT:-12345}
  local keys=${HVDAT_AUTHORIZED_KEYS:-/root/.ssh/authorized_keys}
  if [[ ! $port =~ ^[0-9]+$ ]] || (( port < 1 || port > 65535 )); then
    echo "hvdat-entrypoint: HVDAT_SSH_PORT=$port is not a port number" >&2
    exit 2
  fi
  if [ ! -s "$keys" ]; then
    echo "hvdat-entrypoint: no public keys in $keys; mount one: -v ~/.ssh/id_ed25519.pub:$keys:ro" >&2
    exit 2
  fi
  ssh-keygen -A >/dev/null
  mkdir -p /run/sshd
  echo "hvdat-entrypoint: sshd listening on port $port (keys only)"
  exec /usr/sbin/sshd -D -e -p "$port" \
    -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no -o PermitRootLogin=prohibit-password \
    -o PubkeyAuthentication=yes -o AuthorizedKeysFile="$keys" -o StrictModes=no
}

# Gloo resolves this host's own name in hvd.init() and aborts when it cannot: `docker run --network none` (and
# some setups) leave the container's name out of /etc/hosts. In a container, map it to loopback then.
if [ -f /.dockerenv ] && ! getent hosts "$(hostname)" >/dev/null 2>&1; then
  echo "127.0.0.1 $(hostname)" >> /etc/hosts 2>/dev/null || echo "hvdat-entrypoint: $(hostname) does not resolve" >&2
fi

case "${1:-}" in
  worker) worker ;;
  "") exec hvdat --help ;;
  *) exec "$@" ;;
esac
