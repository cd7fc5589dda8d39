#!/usr/bin/env bash
# Gathers what tools/gpu/window.sh needs on a GPU machine without a display server: Xvfb, Mesa's
# software GL (llvmpipe) and the libraries they load, as Debian packages to unpack there with
# `dpkg -x PKG.deb DIR` (then GL=DIR). Run on Debian 12 here:
#
#   bash tools/gpu/x-libs.sh .gl
#
# libz3 (7 MB) is replaced by a stand-in: LLVM names 112 of its functions for the static analyzer's
# solver, which llvmpipe never calls, but Mesa opens its driver with RTLD_NOW, so each must exist.
set -euo pipefail
dest=${1:?usage: x-libs.sh DIR}
mkdir -p "$dest/stubs"
cd "$dest"
apt-get download \
    xvfb x11-xkb-utils xkb-data libxfont2 libfontenc1 libpixman-1-0 libxkbfile1 libunwind8 libaudit1 \
    libbsd0 libmd0 libgl1-mesa-dri libllvm15 libglapi-mesa libgl1 libglx-mesa0 libglx0 libglvnd0 \
    libegl1 libegl-mesa0 libgbm1 libdrm2 libdrm-common libdrm-amdgpu1 libdrm-intel1 libdrm-nouveau2 \
    libdrm-radeon1 libpciaccess0 libsensors5 libedit2 libelf1 libexpat1 libffi8 libtinfo6 libxml2 \
    libicu72 liblzma5 libzstd1 libx11-6 libx11-data libx11-xcb1 libxau6 libxdmcp6 libxcb1 \
    libxcb-dri2-0 libxcb-dri3-0 libxcb-glx0 libxcb-present0 libxcb-randr0 libxcb-render0 \
    libxcb-shape0 libxcb-shm0 libxcb-sync1 libxcb-xfixes0 libxcb-xkb1 libxshmfence1 libxxf86vm1 \
    libxext6 libxrender1 libxcursor1 libxrandr2 libxi6 libxkbcommon0 libxkbcommon-x11-0 \
    libwayland-client0 libwayland-server0 libasound2 libfreetype6 libpng16-16 libbrotli1 libxfixes3 libxinerama1 libxss1 libxtst6 libxpresent1
tmp=$(mktemp -d)
dpkg -x libllvm15_*.deb "$tmp"
{
    echo '/* Stand-in for libz3.so.4 (see tools/gpu/x-libs.sh). */'
    echo '#include <stdlib.h>'
    readelf -rW "$tmp"/usr/lib/x86_64-linux-gnu/libLLVM-15.so.1 | awk '$5 ~ /^Z3_/ {sub(/@.*/, "", $5); print $5}' \
        | sort -u | while read -r sym; do echo "void $sym(void) { abort(); }"; done
} > stubs/z3_stub.c
cc -shared -fPIC -o stubs/libz3.so.4 -Wl,-soname,libz3.so.4 stubs/z3_stub.c
rm -rf "$tmp"
du -sh .
