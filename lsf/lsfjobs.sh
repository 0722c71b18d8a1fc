# What lsf/submit, lsf/status and lsf/kill share (sourced by them after setting PROGRAM,
# USAGE, EXIT_NOTES and PROGRAM_FLAG): their command line, the pipeline's make variables and
# DAG, the job record (data-layout.md, "LSF job record") and the state of its jobs as bjobs
# reports it. The text work is lsf/lsf.awk's.

# The exit codes of every program in the project (common/exitcodes.h).
EXIT_OK=0
EXIT_INTERNAL=1
EXIT_USAGE=2
EXIT_BAD_INPUT=3
EXIT_PARTIAL=4
EXIT_IO=5
EXIT_TABLE='Exit codes:
  0  success
  1  internal error (a bug, or a library failing unexpectedly)
  2  bad command line
  3  bad input: missing, unreadable or invalid; nothing written
  4  some inputs failed and were skipped; the rest was written
  5  an output could not be written'
LSF_MK=pipeline/lsf.mk
TAB=$(printf '\t')

set -u
# Words from make and the record are split by the shell: never expand them as file names.
set -f
LSF_ROOT=$(cd -P "$(dirname "$0")/.." && pwd -P) || exit $EXIT_INTERNAL
caller_dir=$(pwd -P) || exit $EXIT_INTERNAL
LSF_AWK="$LSF_ROOT/lsf/lsf.awk"
scratch=$(mktemp -d "${TMPDIR:-/tmp}/lsf-$PROGRAM.XXXXXX") || exit $EXIT_INTERNAL
trap 'rm -rf "$scratch"' EXIT
trap 'exit $EXIT_INTERNAL' HUP INT TERM

fail() {
    code=$1
    shift
    printf '%s: %s\n' "$PROGRAM" "$*" >&2
    exit "$code"
}

# lsf_awk TASK [ARGS]: lsf.awk's task. Its inputs: the files in $scratch and the variables
# below, passed in its environment only (never -v, which would interpret backslashes). Byte
# order and ASCII ranges whatever the caller's locale; the jobs keep the caller's.
lsf_awk() {
    task=$1
    shift
    LC_ALL=C LSF_ROOT=$LSF_ROOT LSF_CWD=$caller_dir LSF_MAKEFILE=${makefile:-} \
        LSF_MAKE_WORDS=${make_words:-} LSF_VARIABLE_NAMES=${variable_names:-} \
        LSF_SETTINGS=$scratch/settings LSF_DAG=$scratch/dag LSF_TODO=$scratch/todo \
        LSF_SUBMISSION=${submission:-} LSF_RECORD=${record:-} LSF_ALL=${all_submissions:-0} \
        LSF_STATES=$scratch/states \
        awk -v task="$task" -v program="$PROGRAM" -v program_flag="$PROGRAM_FLAG" \
        -f "$LSF_AWK" -- "$@"
}

# parse_args "$@": sets makefile, config (relative to the repository root when inside it),
# make_words (the make command line of every job, shell-quoted), variable_names, flag_given
# (1 when the program's flag was given); prints the help and exits on --help. Then works in
# the repository root.
parse_args() {
    parsed=$(lsf_awk args "$@") || exit $?
    help=0 flag_given=0 makefile='' config='' make_words='' variable_names=''
    eval "$parsed"
    if [ "$help" = 1 ]; then
        printf '%s\n\n%s\n%s\n' "$USAGE" "$EXIT_TABLE" "$EXIT_NOTES"
        exit $EXIT_OK
    fi
    case $config in
    /*) config_path=$config ;;
    *) config_path=$LSF_ROOT/$config ;;
    esac
    [ -f "$config_path" ] || fail $EXIT_BAD_INPUT "$config: no such config file"
    cd "$LSF_ROOT" || exit $EXIT_INTERNAL
}

# run_make WHAT OUTPUT [MAKE ARGS]: make with the configuration's variables, its stdout to
# OUTPUT; exit 3 with make's errors when it fails.
run_make() {
    what=$1
    output=$2
    shift 2
    eval "set -- $make_words \"\$@\""
    "$@" >"$output" 2>"$scratch/make.err"
    status=$?
    [ $status -eq 0 ] && return
    shown=$(lsf_awk quote "$@")
    fail $EXIT_BAD_INPUT "$what failed (exit $status):
  $shown
$(stripped "$scratch/make.err")"
}

# The text of a file without blank space around it.
stripped() {
    lsf_awk strip "$1"
}

# read_settings: the LSF_* variables of pipeline/lsf.mk as the config and command line set
# them, into $scratch/settings; sets log_dir and record (LSF_LOG_DIR/jobs.tsv).
read_settings() {
    # lsf.mk guards against being read twice, so naming it works whether or not the makefile
    # includes it.
    run_make "reading the LSF settings" "$scratch/settings" -f "$LSF_MK" lsf-resources
    where=$(lsf_awk logdir) || exit $?
    log_dir=${where%%"
"*}
    record=${where#*"
"}
}

# read_states [all]: the jobs of the record's last submission (every submission with "all")
# and their states from bjobs into $scratch/states; sets last_submission (0: no record yet)
# and job_count (the jobs of the rows chosen).
read_states() {
    all_submissions=0
    [ "${1:-}" = all ] && all_submissions=1
    : >"$scratch/states"
    if [ -e "$record" ]; then
        [ -f "$record" ] && [ -r "$record" ] ||
            fail $EXIT_BAD_INPUT "$record: not a readable file"
        lsf_awk record >"$scratch/ids" || exit $?
    else
        echo 0 >"$scratch/ids"
    fi
    last_submission=$(head -n 1 "$scratch/ids")
    job_count=$(($(wc -l <"$scratch/ids") - 1))
    [ "$job_count" -gt 0 ] || return 0
    command -v bjobs >/dev/null 2>&1 ||
        fail $EXIT_BAD_INPUT "bjobs not found: is LSF set up in this shell?"
    # shellcheck disable=SC2046 # job ids: one word each
    bjobs -a -noheader -o "jobid jobindex stat exit_code delimiter='|'" \
        $(tail -n +2 "$scratch/ids") >"$scratch/states" 2>/dev/null
    return 0
}
