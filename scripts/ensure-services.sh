#!/usr/bin/env bash
# Makes sure the local services restartpoint's tests and drill need are up:
#   NATS with JetStream on 127.0.0.1:4222, Redis on 127.0.0.1:6379, PostgreSQL on 127.0.0.1:5432
#   (with a database `test` that the user `postgres` reaches without a password).
# A running server is used as is. A missing one is started; a missing binary is installed from
# Debian's packages when running as root, otherwise this stops and says what to install.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

need_pkg() { # binary package
  command -v "$1" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-services: installing $2 from Debian's packages" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  else
    echo "ensure-services: '$1' is missing. Install it (Debian: sudo apt-get install $2) and run again." >&2
    exit 1
  fi
}

wait_port() { # port name
  for _ in $(seq 1 100); do port_open "$1" && return 0; sleep 0.1; done
  echo "ensure-services: $2 did not start listening on 127.0.0.1:$1" >&2
  exit 1
}

if ! port_open 4222; then
  need_pkg nats-server nats-server
  bin=$(command -v nats-server)
  dir=${RESTARTPOINT_NATS_DIR:-/var/lib/nats-server}
  mkdir -p "$dir" 2>/dev/null || dir=$(mktemp -d)
  echo "ensure-services: starting nats-server -js on 127.0.0.1:4222 (store $dir)" >&2
  nohup "$bin" -a 127.0.0.1 -p 4222 -js -sd "$dir" >/tmp/restartpoint-nats.log 2>&1 &
  wait_port 4222 nats-server
fi
# Tests start extra nats-servers for relays from the same binary.
need_pkg nats-server nats-server

if ! port_open 6379; then
  need_pkg redis-server redis-server
  echo "ensure-services: starting redis-server on 127.0.0.1:6379" >&2
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --logfile /tmp/restartpoint-redis.log >/dev/null
  wait_port 6379 redis-server
fi

if ! port_open 5432; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    need_pkg psql postgresql
    need_pkg pg_ctlcluster postgresql
  fi
  ver=$(ls /etc/postgresql | sort -n | tail -1)
  if [ -z "$ver" ]; then
    echo "ensure-services: PostgreSQL is installed but has no cluster; create one with pg_createcluster" >&2
    exit 1
  fi
  conf=/etc/postgresql/$ver/main/pg_hba.conf
  # Tests connect as postgres over TCP without a password: trust on loopback only.
  if ! grep -q '^host all all 127.0.0.1/32 trust' "$conf"; then
    sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$conf"
  fi
  echo "ensure-services: starting PostgreSQL $ver on 127.0.0.1:5432" >&2
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start
  wait_port 5432 postgresql
fi
if command -v psql >/dev/null 2>&1 &&
  ! psql -h 127.0.0.1 -U postgres -tAc "select 1 from pg_database where datname='test'" 2>/dev/null | grep -q 1; then
  psql -h 127.0.0.1 -U postgres -c 'create database test' >/dev/null 2>&1 ||
    echo "ensure-services: could not create database 'test' (is trust auth on for 127.0.0.1?)" >&2
fi

# FEC's ISA-L backend (docs/fec.md): Intel ISA-L's headers and library from Debian's packages,
# then the addon (a no-op when it is up to date). `npm install` already tried to build it, but on
# a fresh machine libisal-dev is installed only here. Without it FEC falls back to
# @ronomon/reed-solomon, and test/unit/fec-isal.test.ts fails, saying so.
if [ ! -f /usr/include/isa-l/erasure_code.h ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-services: installing libisal-dev from Debian's packages (FEC's ISA-L backend)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libisal-dev >/dev/null
  else
    echo "ensure-services: warning: ISA-L is missing, so FEC falls back to @ronomon/reed-solomon. Install it (Debian: sudo apt-get install libisal-dev) and run npm run build:native." >&2
  fi
fi
node "$(dirname "$0")/build-native.mjs" >&2

# The drill report test (test/integration/drill-report.test.ts) opens the HTML report in headless
# Chromium through playwright-core, which drives the system browser at /usr/bin/chromium. Only
# the test run asks for it (`--with-chromium`): the drill and the bench do not need a browser.
if [ "${1:-}" = "--with-chromium" ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-services: installing chromium from Debian's packages (for the drill report test)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    # Only that test needs it: say so, and let everything else run.
    echo "ensure-services: warning: /usr/bin/chromium is missing, so test/integration/drill-report.test.ts will fail. Install it (Debian: sudo apt-get install --no-install-recommends chromium)." >&2
  fi
fi
