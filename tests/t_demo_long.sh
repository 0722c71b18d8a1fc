#!/bin/sh
# `make demo` end to end (pipeline/demo.sh with pipeline/configs/demo.mk, from nothing): it
# must finish within 15 minutes on 2 cores and its submission must beat the prevalence
# baseline on the phantom test labels (demo.sh exits 1 otherwise). Long: ICH_LONG_TESTS=1.
set -eu
: "${BIN:?}" "${WORK:?}"
fail() {
    echo "FAIL: $*"
    exit 1
}
if [ "${ICH_LONG_TESTS:-0}" != 1 ]; then
    echo "skip: the whole demo takes minutes; run it with make test-long"
    exit 77
fi
start=$(date +%s)
OUT=$WORK/demo BIN=$BIN sh pipeline/demo.sh >"$WORK/demo.log" 2>&1 || {
    tail -n 40 "$WORK/demo.log"
    fail "demo.sh exited non-zero"
}
took=$(($(date +%s) - start))
sed -n '/demo summary/,$p' "$WORK/demo.log"
grep -q "beats the prevalence baseline" "$WORK/demo.log" || fail "no 'beats' line"
[ "$took" -le 900 ] || fail "the demo took $took s, more than 15 minutes"
echo "ok    demo finished in $took s (limit 900) and beats the prevalence baseline"
