#!/bin/sh
# lsf/submit, lsf/status, lsf/kill against the LSF stand-in (tests/lsf/) on a small fake DAG
# (tests/lsf/fake.mk, pipeline.mk's shape, recipes that only touch files): the stand-in refuses
# malformed bsub options and runs arrays and dependencies as LSF does; the dry run prints the
# resources of pipeline/lsf.mk; a submission runs every node after its inputs; a failed node
# stops exactly its dependants, status shows its program's exit code (not make's) and a
# second submit finishes the run; kill and the refusal to submit twice; a bsub refused half
# way (exit 4) and a run with its logs in a folder whose name has a space; settings that make
# no bsub command line; a cyclic DAG. Needs no shared data; about 10 seconds.
set -eu
: "${WORK:?}" "${PY:=/usr/bin/python3}"
. tests/lsf/lib.sh
refused=$LSF_STANDIN_DIR/refused.log

# --- The stand-in itself ---
expect_refused() {
    before=$(cat "$refused" 2>/dev/null | wc -l)
    if bsub "$@" >/dev/null 2>&1; then fail "bsub accepted: $*"; fi
    [ "$(wc -l <"$refused")" -gt "$before" ] || fail "bsub failed without a refusal: $*"
}
bsub -J first -o "$WORK/first.%J.out" 'echo first' >/dev/null || fail "plain bsub refused"
expect_refused -J x -foo 'true'
expect_refused -J x -gpu "num=2:mode=exclusive" 'true'
expect_refused -J x -gpu "num=0" 'true'
expect_refused -J x -gpu "num=2:mode=shared:mode=shared" 'true'
expect_refused -J x -n 0 'true'
expect_refused -J x -n 4,2 'true'
expect_refused -J x -R "span[ptile=0]" 'true'
expect_refused -J x -R "spam[ptile=4]" 'true'
expect_refused -J x -M 4QB 'true'
expect_refused -J x -W 1:75 'true'
expect_refused -J x -W 2h 'true'
expect_refused -J 'x[3-1]' 'true'
expect_refused -J 'x[1-2000]' 'true'
expect_refused -J 'x y' 'true'
expect_refused -J x -w 'done(nosuchjob)' 'true'
expect_refused -J x -w 'done(first' 'true'
expect_refused -J x -w 'done(first) and done(first)' 'true'
expect_refused -J x -w 'finished(first)' 'true'
expect_refused -J x -env "all, 1BAD=2" 'true'
expect_refused -J x -o 'true'
expect_refused -J x -q 'true'
echo "ok    the stand-in refuses $(wc -l <"$refused") malformed bsub command lines"

bsub -J 'arr[1-3]' -w 'done(first) && ended("first")' -n 2 -R "span[ptile=2]" -M 16GB \
    -W 90 -gpu "num=2:mode=exclusive_process:mps=no" -q gpu -P ich \
    -env "all, STANDIN_CHECK='a, b'" -o "$WORK/arr.%J.%I.out" \
    'echo "index $LSB_JOBINDEX of $LSB_JOBNAME, $STANDIN_CHECK"; [ $LSB_JOBINDEX -ne 2 ]' \
    >/dev/null || fail "a valid array submission was refused"
bsub -J after -w 'done("arr")' 'true' >/dev/null
bsub -J after2 -w 'exit("arr[2]", 1) && !done(arr)' -o "$WORK/after2.%J.out" 'true' >/dev/null
lsfrun >"$WORK/lsfrun1.log"
states=$(bjobs -a -noheader -o "job_name stat exit_code delimiter=','" | tr '\n' ' ')
echo "bjobs: $states"
[ "$states" = "first,DONE,0 arr[1],DONE,0 arr[2],EXIT,1 arr[3],DONE,0 after,PEND,- \
after2,DONE,0 " ] || fail "states after the run"
grep -q "index 3 of arr\[3\], a, b" "$WORK"/arr.1002.3.out || fail "array element 3's output"
grep -q "Exited with exit code 1" "$WORK"/arr.1002.2.out || fail "element 2's job report"
echo "ok    arrays (%I, LSB_JOBINDEX), done/ended/exit conditions and exit statuses"

# bkill: a running job stops, its dependant never starts.
bsub -J sleeper 'sleep 30' >/dev/null
bsub -J behind -w 'done(sleeper)' 'true' >/dev/null
lsfrun >"$WORK/lsfrun2.log" &
runner=$!
for _ in $(seq 100); do
    [ "$(bjobs -noheader -o stat -J sleeper)" = RUN ] && break
    sleep 0.1
done
[ "$(bjobs -noheader -o stat -J sleeper)" = RUN ] || fail "the sleeper job did not start"
start=$(date +%s)
bkill 1005 >/dev/null || fail "bkill of the running job"
wait $runner
[ $(($(date +%s) - start)) -lt 10 ] || fail "the killed job ran on"
[ "$(bjobs -a -noheader -o stat 1005 1006 | tr '\n' ' ')" = "EXIT PEND " ] ||
    fail "after bkill: $(bjobs -a 1005 1006)"
echo "ok    bkill stops a running job; its dependant stays pending"

# --- lsf/submit, status, kill on the fake DAG ---
rm -rf "$LSF_STANDIN_DIR"
out=$WORK/out
cfg=$WORK/fake-config.mk
cat >"$cfg" <<EOF
OUT = $out
LSF_QUEUE = gpu
LSF_PROJECT = ich
LSF_JOB_PREFIX = t
LSF_IMAGE = registry.example/ich:1
LSF_APP = docker
LSF_EXTRA = -x
LSF_cnntrain_GPUS = 4
LSF_cnntrain_SLOTS = 4
LSF_cnntrain_PTILE = 4
LSF_bagavg_QUEUE = cpu
LSF_bagavg_WALL = 90
EOF
submit="lsf/submit --makefile tests/lsf/fake.mk $cfg"
status="lsf/status --makefile tests/lsf/fake.mk $cfg"
$submit --dry-run >"$WORK/dry.txt" 2>"$WORK/dry.err" || fail "dry run: $(cat "$WORK/dry.err")"
cat "$WORK/dry.txt"
[ ! -e "$LSF_STANDIN_DIR/jobs" ] || [ -z "$(ls "$LSF_STANDIN_DIR/jobs")" ] ||
    fail "the dry run submitted jobs"
[ ! -e "$out/lsf/jobs.tsv" ] || fail "the dry run wrote a job record"
[ "$(wc -l <"$WORK/dry.txt")" -eq 7 ] || fail "7 jobs expected for 11 nodes"
line() { grep -F -- "-J $1 " "$WORK/dry.txt" || fail "no job $1 in the dry run"; }
# The whole cnntrain command, word by word as the shell splits it.
job_make="make --no-print-directory -f tests/lsf/fake.mk CONFIG=$cfg"
line t-s1-cnntrain-f0 | "$PY" -c 'import shlex, sys
print("\n".join(shlex.split(sys.stdin.read())))' >"$WORK/cnntrain.words"
cat >"$WORK/cnntrain.expected" <<EOF
bsub
-J
t-s1-cnntrain-f0
-q
gpu
-P
ich
-n
4
-R
span[ptile=4]
-gpu
num=4:mode=exclusive_process
-M
64GB
-W
72:00
-o
$out/lsf/s1/cnntrain-f0.%J.out
-e
$out/lsf/s1/cnntrain-f0.%J.err
-env
all, LSB_CONTAINER_IMAGE=registry.example/ich:1
-app
docker
-x
-w
done("t-s1-prepare")
$job_make 'LAUNCH_cnntrain=mpirun -np 4' $out/cnn/epoch1.h5 $out/cnn/epoch2.h5
EOF
diff "$WORK/cnntrain.expected" "$WORK/cnntrain.words" || fail "cnntrain's bsub command"
grep -F -- "-J 't-s1-embdump-f0-e2[1-3]'" "$WORK/dry.txt" |
    grep -F -- "-o $out/lsf/s1/embdump-f0-e2.%J.%I.out" |
    grep -F "case \$LSB_JOBINDEX in 1) t=$out/emb/e2/train.h5;; 2) t=$out/emb/e2/val.h5;; \
3) t=$out/emb/e2/test.h5;;" >/dev/null || fail "embdump's array"
line t-s1-lstmtrain-f0-e2 | grep -F "done(\"t-s1-embdump-f0-e2\")'" >/dev/null ||
    fail "lstmtrain waits for its epoch's embeddings only"
line t-s1-bagavg | grep -F -- "-q cpu" | grep -F -- "-W 90" | grep -F \
    "done(\"t-s1-lstmtrain-f0-e1\") && done(\"t-s1-lstmtrain-f0-e2\")" >/dev/null ||
    fail "bagavg's queue, run limit and dependencies"
echo "ok    dry run: 7 bsub commands (2 arrays), resources, mpirun launcher, container"

# A failing node: exactly its dependants stay pending; the rest runs.
$submit FAIL=embdump-f0-e2-val >"$WORK/submit1.txt" || fail "first submission"
lsfrun --slots 2 >"$WORK/lsfrun3.log"
[ ! -s "$refused" ] || fail "the stand-in refused: $(cat "$refused")"
rc=0
$status >"$WORK/status1.txt" || rc=$?
cat "$WORK/status1.txt"
[ $rc -eq 4 ] || fail "status exit $rc with a failed job (4 expected)"
never=$(awk '$4 == "NEVER" { print $2 }' "$WORK/status1.txt" | tr '\n' ' ')
[ "$never" = "lstmtrain-f0-e2 bagavg " ] || fail "never-starting nodes: $never"
[ "$(awk '$4 == "DONE"' "$WORK/status1.txt" | wc -l)" -eq 8 ] || fail "8 nodes done expected"
# The recipe exits 3 and make 2: the program's code is shown, with its meaning.
grep -qF "failed: embdump-f0-e2-val (job 1004[2])" "$WORK/status1.txt" ||
    fail "status does not name the failed node"
grep -qxF "  exit:   3, bad input: an input is missing, unreadable or invalid; nothing \
written (make exited 2)" "$WORK/status1.txt" || fail "status does not show the program's exit code"
awk '$2 == "embdump-f0-e2-val" && $4 == "EXIT"' "$WORK/status1.txt" |
    grep -qF "exit 3 (bad input), log $out/lsf/s1/embdump-f0-e2.1004.2.err" ||
    fail "the failed node's line does not show its program's exit code"
grep -qF "errors: $out/lsf/s1/embdump-f0-e2.1004.2.err" "$WORK/status1.txt" ||
    fail "status does not name the failed node's log"
grep -q "| embdump-f0-e2-val: failing as asked" "$WORK/status1.txt" ||
    fail "status does not show the end of the log"
echo "ok    a failed node: status names it and its log; exactly its 2 dependants never start"

# Resubmission: only what is missing, after removing the stuck jobs.
$submit >"$WORK/submit2.txt" 2>&1 || fail "second submission: $(cat "$WORK/submit2.txt")"
grep -q "killing 2 job(s) of submission 1" "$WORK/submit2.txt" || fail "stuck jobs kept"
[ "$(grep -c '^[0-9]' "$WORK/submit2.txt")" -eq 3 ] || fail "3 jobs expected in submission 2"
lsfrun >"$WORK/lsfrun4.log"
$status >"$WORK/status2.txt" || fail "status after the second run"
grep -q "^3 nodes: 3 DONE" "$WORK/status2.txt" || fail "$(cat "$WORK/status2.txt")"
make -s -q -f tests/lsf/fake.mk CONFIG="$cfg" "$out/submission.csv" ||
    fail "make still has work after the second run"
$submit 2>&1 | grep -q "nothing to submit" || fail "a third submit found work"
echo "ok    the second submit ran the 3 missing nodes; everything complete"

# Refusal while a submission runs, and kill.
rm -f "$out/submission.csv"
$submit >/dev/null 2>&1 || fail "submission 3"
rc=0
$submit >"$WORK/again.txt" 2>&1 || rc=$?
[ $rc -eq 3 ] && grep -q "submission 3 still has 1 job(s)" "$WORK/again.txt" ||
    fail "a second submit while one waits: exit $rc, $(cat "$WORK/again.txt")"
lsf/kill --makefile tests/lsf/fake.mk "$cfg" >"$WORK/kill.txt" || fail "kill"
rc=0
$status >"$WORK/status3.txt" || rc=$?
grep -q "^1 nodes: 1 EXIT" "$WORK/status3.txt" || fail "after kill: $(cat "$WORK/status3.txt")"
# A killed job ran no program: its own exit code is shown, and said to be the job's.
grep -qx "  exit:   130, killed by signal 2 (the job's exit code: its log names no failed \
program)" "$WORK/status3.txt" || fail "a killed job's exit: $(cat "$WORK/status3.txt")"
echo "ok    submit refuses while a submission waits; kill ends it"
[ ! -s "$refused" ] || fail "the stand-in refused: $(cat "$refused")"

# A bsub refused half way: exit 4, the job before it recorded, lsf/kill removes it; then a
# full run with its logs in a folder whose name has a space and -env values with commas.
rm -f "$out/lstm/e2.h5"
logs="$WORK/lsf logs"
in_logs() {
    $1 --makefile tests/lsf/fake.mk "$cfg" "LSF_LOG_DIR=$logs" LSF_IMAGE= LSF_APP= \
        'LSF_EXTRA=-env "all, CHECK=a b,MORE=2"' "$2"
}
rc=0
in_logs lsf/submit LSF_bagavg_EXTRA=-foo >"$WORK/half.txt" 2>&1 || rc=$?
[ $rc -eq 4 ] && grep -q "bsub refused t-s1-bagavg (exit 255)" "$WORK/half.txt" &&
    grep -qF "(1 job(s) of submission 1 were submitted before it" "$WORK/half.txt" ||
    fail "a refused bsub: exit $rc, $(cat "$WORK/half.txt")"
[ "$(grep -c "^1$(printf '\t')" "$logs/jobs.tsv")" -eq 1 ] ||
    fail "record: $(cat "$logs/jobs.tsv")"
in_logs lsf/kill LSF_bagavg_EXTRA= >"$WORK/kill2.txt" || fail "kill after a refused bsub"
grep -q "^kill: 1 job(s) killed" "$WORK/kill2.txt" || fail "$(cat "$WORK/kill2.txt")"
in_logs lsf/submit LSF_bagavg_EXTRA= >"$WORK/submit5.txt" 2>&1 ||
    fail "$(cat "$WORK/submit5.txt")"
lsfrun >"$WORK/lsfrun5.log"
in_logs lsf/status LSF_bagavg_EXTRA= >"$WORK/status5.txt" || fail "$(cat "$WORK/status5.txt")"
grep -q "^2 nodes: 2 DONE" "$WORK/status5.txt" || fail "$(cat "$WORK/status5.txt")"
grep -q "making $out/submission.csv" "$logs"/s2/bagavg.*.out || fail "bagavg's log in '$logs'"
echo "ok    a bsub refused half way: exit 4, kill removes the job before it; logs in '$logs'"

# Settings that cannot make a bsub command line are refused before anything is submitted.
rm -f "$out/submission.csv"
rc=0
$submit --dry-run 'LSF_EXTRA=-G "unclosed' >"$WORK/unclosed.txt" 2>&1 || rc=$?
[ $rc -eq 3 ] && grep -q "LSF_EXTRA=-G \"unclosed: no closing quotation" "$WORK/unclosed.txt" ||
    fail "an unclosed quote in LSF_EXTRA: exit $rc, $(cat "$WORK/unclosed.txt")"
rc=0
$submit --dry-run LSF_bagavg_SLOTS=two >"$WORK/slots.txt" 2>&1 || rc=$?
[ $rc -eq 3 ] && grep -q "LSF_bagavg_SLOTS=two: expected a positive integer" "$WORK/slots.txt" ||
    fail "a slot count that is not a number: exit $rc, $(cat "$WORK/slots.txt")"
echo "ok    an unclosed quote in LSF_EXTRA and a bad slot count: exit 3"

# A DAG that cannot be run is refused before anything is submitted.
printf 'dag:\n\t@printf "a\\tx\\t%s/a\\tb\\nb\\tx\\t%s/b\\ta\\n"\n' "$WORK" "$WORK" \
    >"$WORK/cycle.mk"
rc=0
lsf/submit --makefile "$WORK/cycle.mk" "$cfg" >"$WORK/cycle.txt" 2>&1 || rc=$?
[ $rc -eq 3 ] && grep -q "a dependency cycle among a b" "$WORK/cycle.txt" ||
    fail "a cyclic DAG: exit $rc, $(cat "$WORK/cycle.txt")"
echo "ok    a cyclic DAG is refused (exit 3)"

# What status reads from a failed job's log, on make's own messages: a program's exit code,
# a program killed by a signal (make names the signal, not a code), make's own error.
printf 'code:\n\t@sh -c "exit 5"\nsegv:\n\t@sh -c %s\nkilled:\n\t@sh -c %s\n' \
    "'kill -SEGV \$\$\$\$'" "'kill -KILL \$\$\$\$'" >"$WORK/die.mk"
failure() {
    env -u MAKEFLAGS -u MAKELEVEL -u MFLAGS make --no-print-directory -f "$WORK/die.mk" "$1" \
        >/dev/null 2>"$WORK/die-$1.err" && fail "make $1 did not fail"
    awk -v task=failure -v program=status -f lsf/lsf.awk -- "$WORK/die-$1.err" 2
}
[ "$(failure code)" = "5, output not written: disk full or permissions (make exited 2)" ] ||
    fail "a program's exit code: $(failure code)"
[ "$(failure segv)" = "139, killed by signal 11 (make exited 2)" ] ||
    fail "a program killed by SIGSEGV: $(failure segv); log: $(cat "$WORK/die-segv.err")"
[ "$(failure killed)" = "137, killed by signal 9 (make exited 2)" ] ||
    fail "a program killed by SIGKILL: $(failure killed)"
case "$(failure no-such-node)" in
"make stopped before any program failed"*) ;;
*) fail "make's own error: $(failure no-such-node)" ;;
esac
echo "ok    status reads exit codes, signals and make's own errors from the logs"
echo "lsf: all checks passed"
