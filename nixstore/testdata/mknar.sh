#!/bin/sh
# Regenerates small.nar, the NAR of the tree that makeNARTree (nar_test.go) builds, with
# real Nix: sh testdata/mknar.sh (needs nix-store). The two must describe the same tree.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
mkdir -p "$t/tree/a/emptydir"
printf 'upper\n' > "$t/tree/B"
printf '#!/bin/sh\necho hi\n' > "$t/tree/a/x"
chmod 0755 "$t/tree/a/x"
: > "$t/tree/a/empty"
printf 'thirteen byte' > "$t/tree/a-b"
ln -s a/x "$t/tree/a.b"
printf '12345678' > "$t/tree/zz"
nix-store --dump "$t/tree" > "$here/small.nar"
