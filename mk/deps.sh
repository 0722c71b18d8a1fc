#!/bin/sh
# Install the Debian packages the build, the tests and the demo need. Idempotent: when every
# package is present it only checks and returns.
set -eu

packages="build-essential pkg-config zlib1g-dev libjpeg62-turbo-dev libhdf5-dev hdf5-tools
libdcmtk-dev dcmtk libdnnl-dev libopenmpi-dev openmpi-bin
python3 python3-numpy python3-scipy python3-h5py python3-pydicom python3-gdcm python3-pil
python3-opencv python3-torch python3-torchvision libopenblas0-pthread"
# libopenblas0-pthread: without it Debian's torch runs its matrix products on the reference
# BLAS (measured 2.3 GFLOP/s), which makes the PyTorch side of every comparison unfairly slow.

missing=""
for p in $packages; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$status" = "installed" ] || missing="$missing $p"
done

if [ -z "$missing" ]; then
    echo "deps: all $(echo $packages | wc -w) Debian packages present"
    exit 0
fi

echo "deps: installing:$missing"
if [ "$(id -u)" -eq 0 ]; then
    sudo=""
elif command -v sudo >/dev/null 2>&1; then
    sudo="sudo"
else
    echo "deps: not root and no sudo; install as root: apt-get install$missing" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
echo "deps: done"
