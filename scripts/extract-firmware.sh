#!/bin/bash
# extract-firmware.sh DIR — put the boot programs bootserve embeds into DIR,
# from Debian's packages, without installing them:
#   ipxe:                  undionly.kpxe, snponly.efi, ipxe.efi
#   shim-signed:           shimx64.efi   (Microsoft-signed shim, Secure Boot)
#   grub-efi-amd64-signed: grubx64.efi   (Debian-signed GRUB network image)
set -euo pipefail
dest=${1:?usage: extract-firmware.sh DIR}
mkdir -p "$dest"
want=(undionly.kpxe snponly.efi ipxe.efi shimx64.efi grubx64.efi)
missing=0
for f in "${want[@]}"; do [ -s "$dest/$f" ] || missing=1; done
[ $missing = 0 ] && exit 0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkgs=(ipxe shim-signed grub-efi-amd64-signed)
( cd "$work" && apt-get download "${pkgs[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get download "${pkgs[@]}"; } )
for d in "$work"/*.deb; do dpkg-deb -x "$d" "$work/root"; done
cp "$work/root/usr/lib/ipxe/undionly.kpxe" "$work/root/usr/lib/ipxe/snponly.efi" "$dest/"
cp "$work/root/boot/ipxe.efi" "$dest/ipxe.efi" # a symlink into /boot in the package
cp "$work/root/usr/lib/shim/shimx64.efi.signed" "$dest/shimx64.efi"
# shim loads grubx64.efi from its own directory: the network image goes by that name.
cp "$work/root/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed" "$dest/grubx64.efi"
ls -l "$dest"
