#!/bin/sh
# Build the Debian package from a scratch copy of the project into dist/ (git ignores it):
#   packaging/build-deb.sh        ->  dist/fingerd_1.0.0_all.deb
# Needs: apt-get install debhelper dh-python python3-all (and lintian to check it).
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
src="$scratch/fingerd-1.0.0"
mkdir -p "$src"
# The files the package is made of; packaging/debian becomes the source's debian/.
cp -a "$top/fingerd.py" "$top/fingerd" "$top/README.md" "$top/man" "$top/tests" "$src/"
mkdir -p "$src/packaging"
cp -a "$top/packaging/inetd.conf" "$top/packaging/systemd" "$src/packaging/"
cp -a "$top/packaging/debian" "$src/debian"
find "$src" -name __pycache__ -prune -exec rm -rf {} +
(cd "$src" && dpkg-buildpackage -us -uc -b)
mkdir -p "$top/dist"
cp "$scratch"/*.deb "$scratch"/*.buildinfo "$scratch"/*.changes "$top/dist/"
ls -l "$top"/dist/*.deb
