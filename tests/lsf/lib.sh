# Shared by the tests of lsf/ (tests/t_lsf*.sh): fail(), the stand-in's state in
# $WORK/cluster, tests/lsf/ first on PATH; for those that run the real pipeline through the
# stand-in (need WORK, BIN), the steps below.
fail() {
    echo "FAIL: $*"
    exit 1
}
LSF_STANDIN_DIR=$WORK/cluster
PATH=$(pwd)/tests/lsf:$PATH
export LSF_STANDIN_DIR PATH

# Skips the test when the programs of the whole pipeline are not all built. Else both runs
# use one copy of them: a build during the test must not give the two runs different programs.
need_programs() {
    for p in mkphantom dcm2jpg mkfolds seqbuild cnntrain embdump lstmtrain bagavg; do
        if [ ! -x "$BIN/$p" ]; then
            echo "skip: $BIN/$p is not built, the pipeline cannot run end to end"
            exit 77
        fi
    done
    cp -Rp "$BIN" "$WORK/bin" || fail "copying $BIN"
    BIN=$WORK/bin
}

# plain_run CONFIG OUT: the configuration by plain make, the reference for the LSF run. When
# plain make itself fails there is nothing to compare with: the pipeline's own tests report
# that failure, this one skips.
plain_run() {
    start=$(date +%s)
    cfg=$1 out=$2
    shift 2
    if ! make --no-print-directory -f pipeline/pipeline.mk CONFIG="$cfg" OUT="$out" BIN="$BIN" \
        "$@" >"$out.log" 2>&1; then
        tail -n 20 "$out.log"
        why=$(grep -m 1 -i error "$out.log" || tail -n 1 "$out.log")
        echo "skip: plain make of the configuration fails ($why)"
        exit 77
    fi
    echo "ok    plain make: $(($(date +%s) - start)) s"
}

# submit_and_run CONFIG [VAR=value ...]: lsf/submit, then the stand-in runs every job it can.
submit_and_run() {
    lsf/submit "$@" BIN="$BIN" >"$WORK/submit.out" 2>"$WORK/submit.err" ||
        fail "lsf/submit: $(cat "$WORK/submit.err")"
    lsfrun --slots 2 >"$WORK/lsfrun.log" 2>&1 || fail "lsfrun: $(tail -n 5 "$WORK/lsfrun.log")"
    [ ! -s "$LSF_STANDIN_DIR/refused.log" ] ||
        fail "the stand-in refused: $(cat "$LSF_STANDIN_DIR/refused.log")"
}

# same_outputs PLAIN_OUT LSF_OUT FILE...: byte for byte equal.
same_outputs() {
    a=$1
    b=$2
    shift 2
    for f in "$@"; do
        [ -s "$a/$f" ] || fail "$a/$f missing"
        cmp "$a/$f" "$b/$f" || fail "$f differs between plain make and the LSF run"
    done
    echo "ok    equal to plain make's, byte for byte: $*"
}
