#!/bin/bash
# extract-firmware.sh DIR — put Debian's iPXE builds (undionly.kpxe,
# snponly.efi, ipxe.efi) into DIR without installing the ipxe package.
set -euo pipefail
dest=${1:?usage: extract-firmware.sh DIR}
mkdir -p "$dest"
if [ -s "$dest/undionly.kpxe" ] && [ -s "$dest/snponly.efi" ] && [ -s "$dest/ipxe.efi" ]; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
( cd "$work" && apt-get download ipxe >/dev/null 2>&1 || { apt-get update -qq && apt-get download ipxe; } )
dpkg-deb -x "$work"/ipxe_*.deb "$work/root"
cp "$work/root/usr/lib/ipxe/undionly.kpxe" "$work/root/usr/lib/ipxe/snponly.efi" "$dest/"
# ipxe.efi is a symlink into /boot in the package.
cp "$work/root/boot/ipxe.efi" "$dest/ipxe.efi"
ls -l "$dest"
