#!/bin/bash
# build.sh - build the boot assets of bootserve's end-to-end tests.
#
# Output directory: $BOOTSERVE_E2E_ASSETS (default /var/tmp/bootserve-e2e):
#   vmlinuz    Debian's kernel from the package linux-image-amd64 depends on
#              (downloaded with apt-get download and unpacked with dpkg-deb -x;
#              nothing is installed). It has the serial console built in.
#   initrd.gz  a gzip'd newc initramfs: static busybox + an /init that prints
#                NETBOOT-OK <kernel command line>
#              on /dev/console and powers the machine off. Tests put a token on
#              the command line (bootserve.marker=vm1) to tell which boot it was.
#   busybox    the static busybox used inside initrd.gz, for tests that build
#              their own initrds.
#
# Idempotent and cheap when nothing changed; safe to run concurrently (flock).
# Needs: apt-get, apt-cache, dpkg-deb (dpkg), busybox-static, cpio, gzip, flock.
set -euo pipefail

OUT=${BOOTSERVE_E2E_ASSETS:-/var/tmp/bootserve-e2e}
mkdir -p "$OUT"
exec 9>"$OUT/.lock"
flock 9

die() { echo "build.sh: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: apt-get install $2"; }
need apt-get apt
need apt-cache apt
need dpkg-deb dpkg
need cpio cpio
need gzip gzip
[ -x /bin/busybox ] || die "/bin/busybox not found: apt-get install busybox-static"
file_is_static() { ! LC_ALL=C ldd "$1" >/dev/null 2>&1; }
file_is_static /bin/busybox || die "/bin/busybox is dynamically linked: apt-get install busybox-static"

# --- kernel -------------------------------------------------------------------
# linux-image-amd64 is a meta package; its Depends names the real image package.
# Resolving it costs ~1 s, so it is redone only when the apt lists changed.
pkg=$(cat "$OUT/vmlinuz.pkg" 2>/dev/null || true)
if [ ! -s "$OUT/vmlinuz" ] || [ -z "$pkg" ] || [ /var/lib/apt/lists -nt "$OUT/vmlinuz.pkg" ]; then
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
  [ -n "$pkg" ] || die "cannot resolve linux-image-amd64 (no apt source? run apt-get update)"
fi
if [ ! -s "$OUT/vmlinuz" ] || [ "$(cat "$OUT/vmlinuz.pkg" 2>/dev/null)" != "$pkg" ]; then
  work=$(mktemp -d "$OUT/kernel.XXXXXX")
  chmod 755 "$work" # apt's download user must be able to write here
  trap 'rm -rf "$work"' EXIT
  ( cd "$work" && apt-get download -q "$pkg" >&2 ) || die "apt-get download $pkg failed"
  dpkg-deb -x "$work"/"${pkg}"_*.deb "$work/root"
  set -- "$work"/root/boot/vmlinuz-*
  [ -f "$1" ] || die "no /boot/vmlinuz-* in $pkg"
  cp "$1" "$OUT/vmlinuz.tmp" && mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
  rm -rf "$work"
  trap - EXIT
fi
echo "$pkg" > "$OUT/vmlinuz.pkg" # also marks the apt lists as seen

# --- busybox + initrd ---------------------------------------------------------
# The stamp covers this script and the busybox binary, so editing /init below
# or upgrading busybox-static rebuilds the initrd.
stamp=$( (cat "$0"; cat /bin/busybox) | sha256sum | cut -c1-64)
if [ ! -s "$OUT/initrd.gz" ] || [ ! -x "$OUT/busybox" ] || [ "$(cat "$OUT/initrd.stamp" 2>/dev/null)" != "$stamp" ]; then
  root=$(mktemp -d "$OUT/initrd.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp}
  cp /bin/busybox "$root/bin/busybox"
  # The kernel opens /dev/console for /init before devtmpfs is mounted: without
  # the node the marker would go nowhere.
  mknod -m 600 "$root/dev/console" c 5 1
  mknod -m 666 "$root/dev/null" c 1 3
  cat > "$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
read -r CMDLINE < /proc/cmdline
read -r UP _ < /proc/uptime
# The line the e2e tests wait for; the command line says which boot this was.
echo "NETBOOT-OK ${CMDLINE}" > /dev/console
echo "netlab: kernel uptime ${UP}s, powering off" > /dev/console
sync
poweroff -f
INIT
  chmod 755 "$root/init"
  ( cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --quiet ) | gzip -9n > "$OUT/initrd.gz.tmp"
  mv "$OUT/initrd.gz.tmp" "$OUT/initrd.gz"
  cp /bin/busybox "$OUT/busybox.tmp" && mv "$OUT/busybox.tmp" "$OUT/busybox"
  echo "$stamp" > "$OUT/initrd.stamp"
  rm -rf "$root"
  trap - EXIT
fi

echo "kernel=$OUT/vmlinuz"
echo "initrd=$OUT/initrd.gz"
echo "busybox=$OUT/busybox"
