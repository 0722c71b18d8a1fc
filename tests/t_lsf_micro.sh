#!/bin/sh
# A micro configuration of the real pipeline (12 phantom series, the tiny classifier, one fold,
# one epoch, a tiny sequence model) submitted through the LSF stand-in gives the submission
# plain make gives, byte for byte. On the way, the validation embeddings are made to fail
# (a launcher that refuses --split val): exactly their dependants never start, the rest runs,
# and a second lsf/submit finishes the run. Needs no shared data; about 20 seconds.
set -eu
: "${BIN:?}" "${WORK:?}" "${PY:=/usr/bin/python3}"
. tests/lsf/lib.sh
need_programs

cfg=$WORK/micro.mk
cat >"$cfg" <<CONFIG
include pipeline/configs/demo.mk
PHANTOM_ARGS = --series 12 --slices 6-8 --size 64 --seed 3 --prevalence 0.9 \\
    --test-fraction 0.25
CNN_EPOCHS = 1
CNN_SIZE = 32
CNN_BATCH = 8
CNN_MICRO_BATCH = 8
CNN_SAVE_EVERY = 0
EMB_TTA = orig
LSTM_HIDDEN = 8
LSTM_EPOCHS = 2
LSTM_BAG = 1
CONFIG
plain_run "$cfg" "$WORK/plain"

out=$WORK/lsf
failer=$WORK/fail-on-val
cat >"$failer" <<'SH'
#!/bin/sh
case " $* " in *" --split val "*) echo "refusing $*" >&2; exit 3 ;; esac
exec "$@"
SH
chmod +x "$failer"

lsf/submit --dry-run "$cfg" OUT="$out" BIN="$BIN" >"$WORK/dry.txt" || fail "dry run"
make --no-print-directory -f pipeline/pipeline.mk CONFIG="$cfg" OUT="$out" dag >"$WORK/dag.txt"
jobs=$(wc -l <"$WORK/dry.txt")
nodes=$(wc -l <"$WORK/dag.txt")
[ "$jobs" -eq $((nodes - 2)) ] || fail "$jobs jobs for $nodes nodes (the 3 embdump as 1 array)"
# Every node's targets are named by exactly one job, nothing else is.
"$PY" - "$WORK/dag.txt" "$WORK/dry.txt" "$out/" <<'CHECK' || fail "targets of the dry run"
import re, shlex, sys
dag = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
named = []
for line in open(sys.argv[2]):
    command = shlex.split(line)[-1]
    named += re.findall(r"t=(\S+);;", command)
    named += [w for w in command.split() if w.startswith(sys.argv[3])]
wanted = sorted(t for node in dag for t in node[2].split())
print("dry run: %d bsub commands naming %d targets" % (len(open(sys.argv[2]).readlines()),
                                                       len(named)))
sys.exit(sorted(named) != wanted)
CHECK

submit_and_run "$cfg" OUT="$out" LAUNCH_embdump="$failer"
rc=0
lsf/status "$cfg" OUT="$out" BIN="$BIN" LAUNCH_embdump="$failer" >"$WORK/status1.txt" || rc=$?
cat "$WORK/status1.txt"
[ $rc -eq 4 ] || fail "status exit $rc after a failure (4 expected)"
failed=$(awk '$4 == "EXIT" { print $2 }' "$WORK/status1.txt" | tr '\n' ' ')
never=$(awk '$4 == "NEVER" { print $2 }' "$WORK/status1.txt" | sort | tr '\n' ' ')
[ "$failed" = "embdump-f0-e1-val " ] || fail "failed nodes: $failed"
[ "$never" = "bagavg lstmtrain-f0-e1 validation-f0 " ] || fail "never-starting nodes: $never"
[ "$(awk '$4 == "DONE"' "$WORK/status1.txt" | wc -l)" -eq $((nodes - 4)) ] ||
    fail "every other node should be done"
# The launcher exited 3 (and make 2): status shows the program's code and its meaning.
grep -qx "  exit:   3, bad input: .* (make exited 2)" "$WORK/status1.txt" ||
    fail "status does not show the failed program's exit code"
echo "ok    a failed embdump stops exactly lstmtrain-f0-e1, validation-f0 and bagavg; status" \
    "shows its exit 3 (bad input), not make's 2"

submit_and_run "$cfg" OUT="$out"
grep -c '^[0-9]' "$WORK/submit.out" | grep -qx 4 || fail "4 jobs expected in submission 2"
lsf/status "$cfg" OUT="$out" BIN="$BIN" >"$WORK/status2.txt" || fail "$(cat "$WORK/status2.txt")"
grep -q "^4 nodes: 4 DONE" "$WORK/status2.txt" || fail "$(cat "$WORK/status2.txt")"
make -q --no-print-directory -f pipeline/pipeline.mk CONFIG="$cfg" OUT="$out" BIN="$BIN" ||
    fail "plain make still finds work after the LSF run"
echo "ok    the second submit ran the 4 missing nodes; make finds nothing left to do"
same_outputs "$WORK/plain" "$out" submission.csv validation/f0.csv
echo "lsf micro: all checks passed"
