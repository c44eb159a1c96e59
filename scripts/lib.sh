#!/usr/bin/env bash
# What scripts/test and scripts/dev share: apt installs without starting daemons, and RabbitMQ
# and PostgreSQL installed when missing and started when not running, on loopback, the way the
# tests and `pvefleet dev` expect them (guest/guest on 127.0.0.1:5672; trust auth for postgres
# on 127.0.0.1:5432). Sourced, not run. Needs root to install packages.

log() { printf '\n==> %s\n' "$*"; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq
    apt_updated=1
  fi
  # Packages install without starting their daemons (pdns on :53, caddy on :80): the tests
  # start their own on free loopback ports, and stop them.
  local policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
  if [ "$policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
}

ensure_rabbitmq() {
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
  # At-least-once dead-lettering needs the stream_queue feature flag (RabbitMQ 3.10).
  rabbitmqctl -q enable_feature_flag all >/dev/null 2>&1 || true
  # A broker test that failed half-way may have left the memory alarm forced on.
  rabbitmqctl -q set_vm_memory_high_watermark 0.4 >/dev/null
}

pg_ok() { psql "postgres://postgres@127.0.0.1:5432/postgres" -qtAc 'select 1' >/dev/null 2>&1; }

ensure_postgres() {
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

