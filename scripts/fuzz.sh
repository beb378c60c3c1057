#!/bin/bash
# fuzz.sh BUDGET — run every Go fuzz target in the module, each for BUDGET:
# a -fuzztime value, a duration (10m) or a count of inputs (30000x).
set -euo pipefail
t=${1:-30000x}
status=0
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
    echo "== $pkg $target ($t)"
    go test -run '^$' -fuzz "^${target}\$" -fuzztime "$t" "$pkg" || status=1
  done
done
exit $status
