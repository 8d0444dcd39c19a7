#!/bin/sh
# Install the Debian packages named in $PKGS when root; otherwise list the missing ones and carry on.
# Without root, fashion_mnist falls back to torchvision's download and the FFCV/Slurm tests skip (in CI, where
# MKF_REQUIRE_ALL_TESTS=1, a skip is a failure).
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q $missing >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q $missing >/dev/null; }
else
  echo "not root: missing Debian packages:$missing (run: sudo apt-get install$missing); dependent tests will skip"
fi
