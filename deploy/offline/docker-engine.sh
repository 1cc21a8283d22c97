#!/usr/bin/env bash
# Start a Docker engine on a Debian or Ubuntu machine that runs none: Debian's docker.io package, started
# without a bridge network, so containers run with `--network host` and are reached on 127.0.0.1.
# Does nothing when an engine already answers. Needs root.
#   deploy/offline/docker-engine.sh            log: /var/log/castream-dockerd.log
set -euo pipefail

DOCKER=${DOCKER:-/usr/bin/docker}
LOG=${DOCKERD_LOG:-/var/log/castream-dockerd.log}

if [ -x "$DOCKER" ] && "$DOCKER" info >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "no Docker engine answers and starting one needs root; run: sudo $0" >&2
    exit 1
fi
if ! command -v dockerd >/dev/null || [ ! -x "$DOCKER" ]; then
    apt-get -o DPkg::Lock::Timeout=600 update -q
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q docker.io
fi
# docker.io may have started its own engine through the init system; ask again before starting one.
if ! "$DOCKER" info >/dev/null 2>&1; then
    # No bridge and no iptables rules: the engine needs neither where every container shares the host network.
    setsid nohup dockerd --bridge=none --iptables=false --ip6tables=false </dev/null >>"$LOG" 2>&1 &
    for _ in $(seq 120); do
        "$DOCKER" info >/dev/null 2>&1 && break
        sleep 0.5
    done
fi
if ! "$DOCKER" info >/dev/null 2>&1; then
    echo "dockerd did not answer within 60 s; its log, $LOG, ends with:" >&2
    tail -n 20 "$LOG" >&2
    exit 1
fi
"$DOCKER" version --format 'Docker engine {{.Server.Version}} ready'
