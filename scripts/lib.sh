#!/usr/bin/env bash
# What scripts/test and scripts/dev share: apt installs without starting daemons, and RabbitMQ
# and PostgreSQL installed when missing and started when not running, on loopback, the way the
# tests and `pvefleet dev` expect them (guest/guest on 127.0.0.1:5672; trust auth for postgres
# on 127.0.0.1:5432). Sourced, not run. Needs root to install packages.

log() { printf '\n==> %s\n' "$*"; }

apt_updated=0
apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "$* missing: install it as root (apt-get install -y $*), or run this as root" >&2
    exit 1
  fi
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq
    apt_updated=1
  fi
  # Packages install without starting their daemons (pdns on :53, caddy on :80): the tests
  # start their own on free loopback ports, and stop them. The guard goes again whatever
  # apt does, so no later daemon start on this machine is refused by it.
  local policy=0 rc=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" || rc=$?
  if [ "$policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  return "$rc"
}

# Whether something answers on a loopback TCP port.
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

ensure_rabbitmq() {
  # A broker already answering is used as it is (and needs no root).
  if port_open 5672 && { [ "$(id -u)" != 0 ] || rabbitmqctl -q status >/dev/null 2>&1; }; then
    return 0
  fi
  if ! command -v rabbitmqctl >/dev/null 2>&1; then
    log "Installing RabbitMQ"
    apt_install rabbitmq-server
  fi
  if ! rabbitmqctl -q status >/dev/null 2>&1; then
    log "Starting RabbitMQ"
    rabbitmq-server -detached
  fi
  # Just after `-detached` the node is not registered yet, and await_startup gives up at once.
  local up=0
  for _ in $(seq 1 60); do
    if timeout 120 rabbitmqctl -q await_startup >/dev/null 2>&1; then up=1; break; fi
    sleep 2
  done
  [ "$up" = 1 ] || { echo "RabbitMQ did not start" >&2; rabbitmqctl -q await_startup; exit 1; }
  # At-least-once dead-lettering, which the fleet's queues use, needs the stream_queue
  # feature flag (RabbitMQ 3.10); a node created by 3.10 has it already.
  rabbitmqctl -q enable_feature_flag stream_queue >/dev/null 2>&1 || true
}

pg_ok() { psql "postgres://postgres@127.0.0.1:5432/postgres" -qtAc 'select 1' >/dev/null 2>&1; }

ensure_postgres() {
  if pg_ok; then return 0; fi
  if ! command -v psql >/dev/null 2>&1 || ! command -v pg_ctlcluster >/dev/null 2>&1; then
    log "Installing PostgreSQL"
    apt_install postgresql postgresql-client
  fi
  if ! pg_ok; then
    log "Starting PostgreSQL"
    local version
    version=$(pg_lsclusters -h | awk 'NR==1 {print $1}')
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -q && break; sleep 1; done
  fi
  if ! pg_ok; then
    # A fresh Debian cluster wants passwords on TCP; the tests use trust on loopback.
    log "Allowing trust auth for postgres on 127.0.0.1"
    local version hba
    version=$(pg_lsclusters -h | awk 'NR==1 {print $1}')
    hba="/etc/postgresql/$version/main/pg_hba.conf"
    sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
    pg_ctlcluster --skip-systemctl-redirect "$version" main reload
    sleep 1
  fi
  pg_ok || { echo "PostgreSQL is not reachable as postgres@127.0.0.1" >&2; exit 1; }
}

