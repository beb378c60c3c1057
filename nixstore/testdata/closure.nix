# Closure for the integration tests, built offline with real Nix (no nixpkgs):
# top -> mid -> leaf, plus top -> top. leaf holds the tree of small.nar (sort order,
# executable, empty file, empty dir, symlink, padding); mid refers to leaf through a file
# and through a symlink; top names mid in a file and itself in another.
let
  mk = name: script: builtins.derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ("export PATH=/usr/bin:/bin; set -e; " + script) ];
  };
  leaf = mk "bootserve-test-leaf" ''
    mkdir -p $out/a/emptydir
    printf 'upper\n' > $out/B
    printf '#!/bin/sh\necho hi\n' > $out/a/x
    chmod 0755 $out/a/x
    : > $out/a/empty
    printf 'thirteen byte' > $out/a-b
    ln -s a/x $out/a.b
    printf '12345678' > $out/zz
  '';
  mid = mk "bootserve-test-mid" ''
    mkdir -p $out/bin
    printf '#!/bin/sh\nexec ${leaf}/a/x\n' > $out/bin/run
    chmod 0555 $out/bin/run
    ln -s ${leaf}/a/x $out/x
  '';
in mk "bootserve-test-top" ''
  mkdir -p $out
  echo ${mid} > $out/ref
  echo $out > $out/self
''
