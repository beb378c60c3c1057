# A NixOS-shaped system for end-to-end boots, built offline with real Nix (no nixpkgs).
# Built by nixtest.BuildSystem; every argument is a string given with --argstr.
#   busybox       host path of a static busybox
#   vmlinuz       host path of a kernel image (bzImage)
#   marker        distinguishes systems (letters, digits, . _ -)
#   kernelParams  content of kernel-params
{ busybox, vmlinuz, marker, kernelParams }:
let
  mk = name: script: attrs: builtins.derivation ({
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ("export PATH=/usr/bin:/bin; set -e; " + script) ];
  } // attrs);

  # Imported by content, so a changed file gives new store paths.
  busyboxSrc = builtins.path { path = /. + busybox; name = "busybox-static-src"; };
  vmlinuzSrc = builtins.path { path = /. + vmlinuz; name = "vmlinuz-src"; };

  bb = mk "busybox-static" ''
    mkdir -p $out/bin
    cp ${busyboxSrc} $out/bin/busybox
    chmod 0555 $out/bin/busybox
  '' {};

  kernel = mk "linux-bootserve-test" ''
    mkdir -p $out
    cp ${vmlinuzSrc} $out/bzImage
    chmod 0444 $out/bzImage
  '' {};

  # The registration has exactly one 64-hex-digit line (the NAR hash) per store path.
  init = ''
    #!${bb}/bin/busybox sh
    # bootserve test init: report what arrived, then power off.
    bb=${bb}/bin/busybox
    $bb mkdir -p /proc /sys /dev
    $bb mount -t proc proc /proc
    $bb mount -t sysfs sysfs /sys
    $bb mount -t devtmpfs devtmpfs /dev
    exec </dev/console >/dev/console 2>&1
    reg=/nix/.nix-netboot-serve-db/registration
    n=none
    if [ -f $reg ]; then n=$($bb grep -cE '^[0-9a-f]{64}$' $reg); fi
    echo "NIX-NETBOOT-OK marker=${marker} paths=$n cmdline=$($bb cat /proc/cmdline)"
    $bb sync
    $bb poweroff -f
  '';
in mk "nixos-system-bootserve-test-${marker}" ''
  mkdir -p $out
  ln -s ${kernel}/bzImage $out/kernel
  printf '%s' "$kernelParams" > $out/kernel-params
  printf '%s' "$initScript" > $out/init
  chmod 0555 $out/init
'' { initScript = init; inherit kernelParams marker; }
