#!/usr/bin/env bash
# Makes sure the local services restartpoint's tests and drill need are up:
#   NATS with JetStream on 127.0.0.1:4222.
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
