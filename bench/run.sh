#!/bin/sh
# Runs every benchmark (bench/*_bench.sh) in turn; `make bench` calls this.
set -u
cd "$(dirname "$0")"
status=0
for b in ./*_bench.sh; do
    [ -f "$b" ] || continue
    echo "== $b"
    sh "$b" || status=1
done
exit $status
