#!/usr/bin/env bash
# Provide the CPU image's base (deploy/Dockerfile's FROM, python:3.11.*-slim-bookworm) where no registry can be
# reached: pull it if possible, otherwise build a stand-in from Debian's packages with debootstrap (bookworm ships
# Python 3.11) and tag it with the same name. Like the official image, the stand-in has `python` and `pip` in
# /usr/local/bin, where pip installs (a virtual environment at /usr/local), and groupadd/useradd. The root file
# system is cached as a tarball, so later runs only import it. Needs root and the Debian archive.
#   deploy/offline/standin-base.sh python:3.11.14-slim-bookworm [CACHE_DIR]   (default CACHE_DIR: .cache/standin)
set -euo pipefail

IMAGE=${1:?usage: $0 IMAGE [CACHE_DIR]}
CACHE=${2:-.cache/standin}
DOCKER=${DOCKER:-/usr/bin/docker}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
TARBALL=$CACHE/bookworm-python3.11.tar.gz

if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "$IMAGE: already here"
    exit 0
fi
if timeout 60 "$DOCKER" pull -q "$IMAGE" >/dev/null 2>&1; then
    echo "$IMAGE: pulled"
    exit 0
fi
echo "$IMAGE: cannot be pulled; building a stand-in from Debian bookworm"
if [ ! -s "$TARBALL" ]; then
    command -v debootstrap >/dev/null || {
        apt-get -o DPkg::Lock::Timeout=600 update -q
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q debootstrap
    }
    mkdir -p "$CACHE"
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,passwd,ca-certificates bookworm "$root" "$MIRROR"
    # A virtual environment at /usr/local puts python and pip where the official image has them, and lets pip
    # install there (Debian's own Python refuses: PEP 668).
    chroot "$root" python3 -m venv /usr/local
    chroot "$root" apt-get clean
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log
    tar -C "$root" --numeric-owner -czf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
fi
"$DOCKER" import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "stand-in for $IMAGE: Debian bookworm's Python 3.11, built by deploy/offline/standin-base.sh" \
    "$TARBALL" "$IMAGE" >/dev/null
echo "$IMAGE: stand-in imported from $TARBALL"
