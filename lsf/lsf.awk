# The text work of lsf/submit, lsf/status and lsf/kill (lsf/lsfjobs.sh runs it): their command
# line, the LSF settings, the DAG and its jobs, the job record and the state of its jobs.
#   awk -v task=TASK -v program=NAME -v program_flag=--FLAG -f lsf/lsf.awk [-- ARGS]
# Every task runs in BEGIN and reads its files with getline; its inputs come from ENVIRON
# (never -v, which would interpret backslashes). Errors: "program: message" on stderr and the
# exit code of common/exitcodes.h.

BEGIN {
    EXIT_BAD_INPUT = 3
    EXIT_PARTIAL = 4
    EXIT_USAGE = 2
    TAB = "\t"
    RECORD_FIELDS = "submission job_id index node stage job_name deps stdout stderr"
    record_field_count = split(RECORD_FIELDS, record_field_names, " ")
    if (task == "args") parse_args()
    else if (task == "quote") print quoted_words()
    else if (task == "strip") print strip(file_text(ARGV[1]))
    else if (task == "dag") order_dag()
    else if (task == "logdir") print_log_dir()
    else if (task == "plan") plan_jobs()
    else if (task == "record") print_record_ids()
    else if (task == "status") print_status()
    else if (task == "unfinished") print_unfinished()
    else if (task == "previous") check_previous()
    else if (task == "failure") describe_log(ARGV[1], ARGV[2])
    else die(1, "lsf.awk: unknown task " task)
    exit 0
}

function die(code, message) {
    printf "%s: %s\n", program, message > "/dev/stderr"
    exit code
}

# ---- Shell words -------------------------------------------------------------------------

# A word the shell reads back as itself: unchanged when made of safe characters only, else
# in single quotes (the same text as Python's shlex.quote, which the tests compare with).
function shell_quote(word) {
    if (word == "") return "''"
    if (word !~ /[^A-Za-z0-9_@%+=:,.\/-]/) return word
    gsub(/'/, "'\"'\"'", word)
    return "'" word "'"
}

# The arguments as one shell command line.
function quoted_words(    i, line) {
    line = ""
    for (i = 1; i < ARGC; i++) line = line (i > 1 ? " " : "") shell_quote(ARGV[i])
    return line
}

# Splits text into words as a POSIX shell would, without expanding anything: quotes,
# backslashes and blanks only. Returns the count, or -1 with split_error set.
function shell_split(text, words,    count, at, char, state, token, quoted, escaped_in) {
    count = 0
    state = " "
    token = ""
    quoted = 0
    split_error = ""
    for (at = 1; at <= length(text) + 1; at++) {
        char = at <= length(text) ? substr(text, at, 1) : ""
        if (state == " " || state == "a") {
            if (char == "" || index(" \t\r\n", char)) {
                if (token != "" || quoted) words[++count] = token
                token = ""
                quoted = 0
                state = " "
                if (char == "") break
            } else if (char == "\\") {
                escaped_in = "a"
                state = char
            } else if (char == "'" || char == "\"") {
                state = char
            } else {
                token = token char
                state = "a"
            }
        } else if (state == "\\") {
            if (char == "") {
                split_error = "no character after the last backslash"
                return -1
            }
            # Inside double quotes a backslash escapes only a quote or a backslash.
            if (escaped_in == "\"" && char != "\\" && char != "\"") token = token "\\"
            token = token char
            state = escaped_in
        } else {
            quoted = 1
            if (char == "") {
                split_error = "no closing quotation"
                return -1
            }
            if (char == state) state = "a"
            else if (char == "\\" && state == "\"") {
                escaped_in = state
                state = "\\"
            } else token = token char
        }
    }
    return count
}

# The string as Python's repr() writes it, for messages that quote a line of input.
function quoted_for_message(text,    quote, out, at, char, code) {
    quote = index(text, "'") && !index(text, "\"") ? "\"" : "'"
    out = ""
    for (at = 1; at <= length(text); at++) {
        char = substr(text, at, 1)
        if (char == "\\" || char == quote) out = out "\\" char
        else if (char == "\t") out = out "\\t"
        else if (char == "\n") out = out "\\n"
        else if (char == "\r") out = out "\\r"
        else if (char < " " || char == "\177") {
            for (code = 1; code < 128 && sprintf("%c", code) != char; code++) ;
            out = out sprintf("\\x%02x", code)
        } else out = out char
    }
    return quote out quote
}

function file_text(path,    line, text, separator) {
    text = ""
    separator = ""
    while ((getline line < path) > 0) {
        text = text separator line
        separator = "\n"
    }
    close(path)
    return text
}

function strip(text) {
    sub(/^[ \t\r\n\f\v]+/, "", text)
    sub(/[ \t\r\n\f\v]+$/, "", text)
    return text
}

# ---- Paths (the rules of Python's os.path, which the record and messages follow) ------------

function path_join(folder, name) {
    if (name ~ /^\// || folder == "" || folder ~ /\/$/) return (name ~ /^\// ? "" : folder) name
    return folder "/" name
}

# "." and ".." resolved as text, repeated slashes folded.
function normal_path(path,    slashes, parts, count, i, kept, part, out) {
    if (path == "") return "."
    slashes = path ~ /^\// ? (path ~ /^\/\/[^\/]/ || path == "//" ? 2 : 1) : 0
    count = split(path, parts, "/")
    kept = 0
    for (i = 1; i <= count; i++) {
        part = parts[i]
        if (part == "" || part == ".") continue
        if (part != ".." || (!slashes && !kept) || (kept && parts_kept[kept] == ".."))
            parts_kept[++kept] = part
        else if (kept) kept--
    }
    out = ""
    for (i = 1; i <= kept; i++) out = out (i > 1 ? "/" : "") parts_kept[i]
    out = substr("//", 1, slashes) out
    return out == "" ? "." : out
}

# path relative to start, both absolute.
function relative_path(path, start,    from, to, from_count, to_count, common, i, out) {
    from_count = split_path(normal_path(start), from)
    to_count = split_path(normal_path(path), to)
    for (common = 0; common < from_count && common < to_count; common++)
        if (from[common + 1] != to[common + 1]) break
    out = ""
    for (i = common; i < from_count; i++) out = out (out == "" ? "" : "/") ".."
    for (i = common + 1; i <= to_count; i++) out = out (out == "" ? "" : "/") to[i]
    return out == "" ? "." : out
}

function split_path(path, parts,    all, count, i, kept) {
    count = split(path, all, "/")
    kept = 0
    for (i = 1; i <= count; i++) if (all[i] != "") parts[++kept] = all[i]
    return kept
}

function exists(path) {
    return system("test -e " shell_quote(path)) == 0
}

# A path given relative to the caller's folder, as the scripts use it from the repository
# root: relative to the root when inside it, else absolute.
function from_root(path, root, cwd,    full, inside) {
    full = normal_path(path ~ /^\// ? path : path_join(cwd, path))
    if (!exists(full) && exists(path_join(root, path))) full = path_join(root, path)
    inside = relative_path(full, root)
    return inside ~ /^\.\./ ? full : inside
}

# ---- The command line: CONFIG [VAR=value ...], --makefile FILE, the program's flag, --help --

# Prints shell assignments for lsfjobs.sh to evaluate: makefile, config, make_words (the make
# command line of every job, shell-quoted), variable_names, flag_given, help.
function parse_args(    i, arg, makefile, positional, count, flag_seen, name, make_words, names) {
    makefile = "pipeline/pipeline.mk"
    count = 0
    flag_seen = 0
    for (i = 1; i < ARGC; i++) {
        arg = ARGV[i]
        if (arg !~ /^-/) positional[++count] = arg
        else if (arg == "-h" || arg == "--help") {
            print "help=1"
            return
        } else if (arg == program_flag) flag_seen = 1
        else if (arg == "--makefile" && i + 1 < ARGC) makefile = ARGV[++i]
        else if (arg ~ /^--makefile=/) makefile = substr(arg, 12)
        else usage_error("unknown option " arg)
    }
    if (count == 0) usage_error("name a config (pipeline/configs/*.mk)")
    names = ""
    for (i = 2; i <= count; i++) {
        if (positional[i] !~ /^[A-Za-z_][A-Za-z0-9_]*=/)
            usage_error(positional[i] ": expected VAR=value")
        name = positional[i]
        sub(/=.*/, "", name)
        names = names " " name
    }
    makefile = from_root(makefile, ENVIRON["LSF_ROOT"], ENVIRON["LSF_CWD"])
    positional[1] = from_root(positional[1], ENVIRON["LSF_ROOT"], ENVIRON["LSF_CWD"])
    make_words = "make --no-print-directory -f " shell_quote(makefile) " " \
        shell_quote("CONFIG=" positional[1])
    for (i = 2; i <= count; i++) make_words = make_words " " shell_quote(positional[i])
    print "help=0"
    print "flag_given=" flag_seen
    print "makefile=" shell_quote(makefile)
    print "config=" shell_quote(positional[1])
    print "make_words=" shell_quote(make_words)
    print "variable_names=" shell_quote(substr(names, 2))
}

function usage_error(message) {
    printf "%s: %s (--help lists the options)\n", program, message > "/dev/stderr"
    exit EXIT_USAGE
}

# ---- The LSF settings (make ... lsf-resources: NAME=value lines) ---------------------------

function read_settings(file,    line, name) {
    while ((getline line < file) > 0) {
        if (!index(line, "=")) continue
        name = substr(line, 1, index(line, "=") - 1)
        if (name ~ /^LSF_/) setting[name] = strip(substr(line, index(line, "=") + 1))
    }
    close(file)
    if (!("LSF_STAGES" in setting))
        die(EXIT_BAD_INPUT, ENVIRON["LSF_MAKEFILE"] " printed no LSF settings")
}

function record_path() {
    return path_join(setting["LSF_LOG_DIR"], "jobs.tsv")
}

function print_log_dir() {
    read_settings(ENVIRON["LSF_SETTINGS"])
    print setting["LSF_LOG_DIR"]
    print record_path()
}

# ---- The DAG (make ... dag: NODE, STAGE, TARGETS, DEPS separated by tabs) ------------------

# Reads the DAG into node_* arrays in an order where every node comes after its dependencies:
# rounds of the nodes whose dependencies are all placed, each round in the file's order.
function read_dag(file,    line, fields, number, count, name, ordered, placed, round, ready, i,
                  d, all_placed, missing, unknown, rest) {
    count = 0
    number = 0
    while ((getline line < file) > 0) {
        number++
        if (split(line, fields, TAB) != 4 || fields[1] == "" || fields[3] !~ /[^ \t\n\r\f\v]/)
            die(EXIT_BAD_INPUT, "make dag, line " number ": expected NODE, STAGE, TARGETS, " \
                "DEPS separated by tabs: " quoted_for_message(line))
        name = fields[1]
        if (name !~ /^[A-Za-z0-9._-]+$/ || (name in dag_index))
            die(EXIT_BAD_INPUT, "make dag, line " number ": node name " \
                quoted_for_message(name) " is " \
                ((name in dag_index) ? "repeated" : "not made of A-Z a-z 0-9 . - _"))
        dag_index[name] = ++count
        dag_name[count] = name
        dag_stage[count] = fields[2]
        dag_targets[count] = words_of(fields[3])
        dag_deps[count] = words_of(fields[4])
    }
    close(file)

    ordered = 0
    while (ordered < count) {
        round = 0
        for (i = 1; i <= count; i++) {
            if (dag_name[i] in placed) continue
            d = split(dag_deps[i], fields, " ")
            all_placed = 1
            while (d > 0) if (!(fields[d--] in placed)) all_placed = 0
            if (all_placed) ready[++round] = i
        }
        if (round == 0) {
            unknown = ""
            rest = ""
            for (i = 1; i <= count; i++) {
                d = split(dag_deps[i], fields, " ")
                while (d > 0) if (!(fields[d--] in dag_index)) missing[fields[d + 1]] = 1
                if (!(dag_name[i] in placed)) rest = rest " " dag_name[i]
            }
            for (name in missing) unknown = unknown " " name
            die(EXIT_BAD_INPUT, "make dag: " (unknown != "" ? \
                "unknown dependencies: " sorted_words(substr(unknown, 2)) : \
                "a dependency cycle among " sorted_words(substr(rest, 2))))
        }
        for (i = 1; i <= round; i++) {
            order[++ordered] = ready[i]
            placed[dag_name[ready[i]]] = 1
        }
    }
    dag_count = count
}

function words_of(text,    words, count, i, out) {
    count = split(text, words)
    out = ""
    for (i = 1; i <= count; i++) out = out (i > 1 ? " " : "") words[i]
    return out
}

# Space-separated words sorted by byte value (LC_ALL=C).
function sorted_words(text,    words, count, i, j, word, out) {
    count = split(text, words, " ")
    for (i = 2; i <= count; i++) {
        word = words[i]
        for (j = i - 1; j > 0 && words[j] > word; j--) words[j + 1] = words[j]
        words[j + 1] = word
    }
    out = ""
    for (i = 1; i <= count; i++) out = out (i > 1 ? " " : "") words[i]
    return out
}

# The DAG in dependency order, one node a line: NODE TAB TARGETS TAB DEPS.
function order_dag(    i, n) {
    read_dag(ENVIRON["LSF_DAG"])
    for (i = 1; i <= dag_count; i++) {
        n = order[i]
        print dag_name[n] TAB dag_targets[n] TAB dag_deps[n]
    }
}

# ---- The jobs of a submission ----------------------------------------------------------------

# Jobs: lists of the nodes still to make. Nodes of an array stage form one job array when they
# share the stage, the dependencies and the dependants: then every dependant waits for the
# whole array, and no node waits longer than it would alone (LSF has no per-element
# dependency). Prints a job a line, "J TAB NAME TAB MEMBERS TAB BSUB-COMMAND", each followed
# by its members, "M TAB K TAB LOG (without .out) TAB the record's fields after job_id, up to
# stdout".
function plan_jobs(    file, line, count, i, n, d, deps, node, key, job, array_stages, names,
                       k, jobs) {
    read_settings(ENVIRON["LSF_SETTINGS"])
    read_dag(ENVIRON["LSF_DAG"])
    file = ENVIRON["LSF_TODO"]
    while ((getline line < file) > 0) todo[line] = 1
    close(file)
    split(setting["LSF_ARRAY_STAGES"], names)
    for (i in names) array_stages[names[i]] = 1
    split(ENVIRON["LSF_VARIABLE_NAMES"], names, " ")
    for (i in names) given[names[i]] = 1

    for (i = 1; i <= dag_count; i++) {
        n = order[i]
        if (!(dag_name[n] in todo)) continue
        count = split(dag_deps[n], deps, " ")
        todo_deps[n] = ""
        for (d = 1; d <= count; d++) if (deps[d] in todo) {
            todo_deps[n] = todo_deps[n] (todo_deps[n] == "" ? "" : " ") deps[d]
            node = dag_index[deps[d]]
            children[node] = children[node] " " dag_name[n]
        }
    }
    jobs = 0
    for (i = 1; i <= dag_count; i++) {
        n = order[i]
        if (!(dag_name[n] in todo)) continue
        key = dag_stage[n] TAB sorted_words(todo_deps[n]) TAB sorted_words(substr(children[n], 2))
        if ((dag_stage[n] in array_stages) && (key in job_of_key)) {
            job = job_of_key[key]
            member[job, ++member_count[job]] = n
        } else {
            job = ++jobs
            member[job, 1] = n
            member_count[job] = 1
            job_of_key[key] = job
        }
        job_of_node[dag_name[n]] = job
    }
    name_jobs(jobs)
    for (job = 1; job <= jobs; job++) {
        wait_for(job)
        line = "J" TAB job_name[job] TAB member_count[job] TAB bsub_command(job)
        for (k = 1; k <= member_count[job]; k++) {
            n = member[job, k]
            line = line "\nM" TAB k TAB job_log[job] TAB (member_count[job] > 1 ? k : 0) TAB \
                dag_name[n] TAB dag_stage[n] TAB job_name[job] TAB \
                (todo_deps[n] == "" ? "-" : comma_separated(todo_deps[n]))
        }
        plan[job] = line
    }
    # Printed only once every job's command is known: a bad setting prints nothing.
    for (job = 1; job <= jobs; job++) print plan[job]
}

function comma_separated(text) {
    gsub(/ /, ",", text)
    return text
}

# Job names PREFIX-sN-BASE; BASE: the node, or for an array the members' common words.
function name_jobs(jobs,    taken, job, base, n) {
    for (n in todo) taken[n] = 1
    for (job = 1; job <= jobs; job++) {
        base = member_count[job] == 1 ? dag_name[member[job, 1]] : array_base_name(job)
        if (member_count[job] > 1 && (base in taken)) base = base "-array"
        taken[base] = 1
        job_base[job] = base
        job_name[job] = setting["LSF_JOB_PREFIX"] "-s" ENVIRON["LSF_SUBMISSION"] "-" base
    }
}

# The longest common run of '-'-separated words of the members' names.
function array_base_name(job,    first, count, k, i, parts, common) {
    count = split(dag_name[member[job, 1]], first, "-")
    for (k = 2; k <= member_count[job]; k++) {
        i = split(dag_name[member[job, k]], parts, "-")
        if (i < count) count = i
        for (i = 1; i <= count; i++) if (parts[i] != first[i]) count = i - 1
    }
    common = ""
    for (i = 1; i <= count; i++) common = common (i > 1 ? "-" : "") first[i]
    return common != "" ? common : dag_stage[member[job, 1]]
}

# The jobs this job waits for, leaving out any that another of them waits for already.
function wait_for(job,    k, count, deps, d, on, e, keep) {
    for (k = 1; k <= member_count[job]; k++) {
        count = split(todo_deps[member[job, k]], deps, " ")
        for (d = 1; d <= count; d++) on[job_of_node[deps[d]]] = 1
    }
    for (d in on) {
        ancestor[job, d] = 1
        for (e = 1; e < job; e++) if ((d, e) in ancestor) ancestor[job, e] = 1
    }
    job_waits[job] = ""
    for (d = 1; d < job; d++) {
        if (!(d in on)) continue
        keep = 1
        for (e in on) if ((e, d) in ancestor) keep = 0
        if (keep) job_waits[job] = job_waits[job] (job_waits[job] == "" ? "" : " && ") \
            "done(\"" job_name[d] "\")"
    }
}

function stage_setting(stage, field) {
    return setting["LSF_" stage "_" field]
}

# A count setting of a stage as digits without leading zeros.
function count_setting(stage, field, zero_allowed,    value) {
    value = stage_setting(stage, field)
    if (value == "") value = "0"
    if (value !~ /^[0-9]+$/ || (value ~ /^0+$/ && !zero_allowed))
        die(EXIT_BAD_INPUT, "LSF_" stage "_" field "=" value ": expected a " \
            (zero_allowed ? "non-negative" : "positive") " integer")
    sub(/^0+/, "", value)
    return value == "" ? "0" : value
}

function bsub_command(job,    stage, array, words, value, slots, gpus, log_base) {
    stage = dag_stage[member[job, 1]]
    array = member_count[job] > 1
    words = "bsub -J " shell_quote(job_name[job] (array ? "[1-" member_count[job] "]" : ""))
    if ((value = stage_setting(stage, "QUEUE")) != "") words = words " -q " shell_quote(value)
    if (setting["LSF_PROJECT"] != "") words = words " -P " shell_quote(setting["LSF_PROJECT"])
    slots = count_setting(stage, "SLOTS", 0)
    words = words " -n " slots
    if ((value = stage_setting(stage, "PTILE")) != "")
        words = words " -R " shell_quote("span[ptile=" value "]")
    gpus = count_setting(stage, "GPUS", 1)
    if (gpus != "0") words = words " -gpu " shell_quote("num=" gpus ":mode=exclusive_process")
    if ((value = stage_setting(stage, "MEM")) != "") words = words " -M " shell_quote(value)
    if ((value = stage_setting(stage, "WALL")) != "") words = words " -W " shell_quote(value)
    log_base = path_join(path_join(setting["LSF_LOG_DIR"], "s" ENVIRON["LSF_SUBMISSION"]),
                         job_base[job]) (array ? ".%J.%I" : ".%J")
    job_log[job] = log_base
    words = words " -o " shell_quote(log_base ".out") " -e " shell_quote(log_base ".err")
    if (setting["LSF_IMAGE"] != "") {
        if (setting["LSF_APP"] == "")
            die(EXIT_BAD_INPUT, "LSF_IMAGE needs LSF_APP: an application profile whose " \
                "CONTAINER runs $LSB_CONTAINER_IMAGE")
        words = words " -env " shell_quote("all, LSB_CONTAINER_IMAGE=" setting["LSF_IMAGE"])
    }
    if (setting["LSF_APP"] != "") words = words " -app " shell_quote(setting["LSF_APP"])
    words = words extra_words("LSF_EXTRA") extra_words("LSF_" stage "_EXTRA")
    if (job_waits[job] != "") words = words " -w " shell_quote(job_waits[job])
    return words " " shell_quote(job_command(job, stage, slots))
}

# More bsub options from a setting, split like a shell line, each word quoted again.
function extra_words(name,    words, count, i, out) {
    count = shell_split(setting[name], words)
    if (count < 0) die(EXIT_BAD_INPUT, name "=" setting[name] ": " split_error)
    out = ""
    for (i = 1; i <= count; i++) out = out " " shell_quote(words[i])
    return out
}

# The shell command line of a job: make on the node's targets; for an array, the element's
# targets chosen by $LSB_JOBINDEX.
function job_command(job, stage, slots,    make, names, mpi, i, count, targets, cases, k) {
    make = ENVIRON["LSF_MAKE_WORDS"]
    split(setting["LSF_MPI_STAGES"], names)
    mpi = 0
    for (i in names) if (names[i] == stage) mpi = 1
    if (mpi && slots + 0 > 1 && !(("LAUNCH_" stage) in given)) {
        # pipeline.mk expands the launcher more than once: no $ survives that reliably.
        if (index(setting["LSF_MPIRUN"], "$"))
            die(EXIT_BAD_INPUT, "LSF_MPIRUN=" setting["LSF_MPIRUN"] ": no $ here; put what " \
                "needs the job's variables in a script (like lsf/mpirun-hosts)")
        make = make " " shell_quote("LAUNCH_" stage "=" setting["LSF_MPIRUN"] " -np " slots)
    }
    if (member_count[job] == 1) {
        count = split(dag_targets[member[job, 1]], targets, " ")
        for (i = 1; i <= count; i++) make = make " " shell_quote(targets[i])
        return make
    }
    cases = ""
    for (k = 1; k <= member_count[job]; k++)
        cases = cases (k > 1 ? " " : "") k ") t=" shell_quote(dag_targets[member[job, k]]) ";;"
    # An unknown index must not fall through to make's default target.
    return "case $LSB_JOBINDEX in " cases " *) exit 2;; esac; " make " $t"
}

# ---- The job record (data-layout.md, "LSF job record") and the jobs' states ---------------

# Reads the record's rows into row_* arrays, oldest first; with ENVIRON["LSF_ALL"] != 1 only
# those of the last submission. Sets last_submission (0 without a record).
function read_record(path,    line, number, fields, count, i, rows, all) {
    rows = 0
    number = 0
    last_submission = 0
    while ((getline line < path) > 0) {
        number++
        if (line ~ /^#/ || line !~ /[^ \t\n\r\f\v]/) continue
        if (split(line, fields, TAB) != record_field_count)
            die(EXIT_BAD_INPUT, path ":" number ": expected " record_field_count \
                " tab-separated fields")
        if (fields[1] !~ /^[0-9]+$/)
            die(EXIT_BAD_INPUT, path ":" number ": submission " \
                quoted_for_message(fields[1]) " is not a number")
        rows++
        for (i = 1; i <= record_field_count; i++)
            all[rows, record_field_names[i]] = fields[i]
        all[rows, "submission"] += 0
        if (all[rows, "submission"] > last_submission) last_submission = all[rows, "submission"]
    }
    close(path)
    row_count = 0
    for (i = 1; i <= rows; i++) {
        if (ENVIRON["LSF_ALL"] != 1 && all[i, "submission"] != last_submission) continue
        row_count++
        for (count = 1; count <= record_field_count; count++)
            row[row_count, record_field_names[count]] = all[i, record_field_names[count]]
    }
}

# First line: the last submission (0: none yet); then the job ids of the rows, once each.
function print_record_ids(    ids) {
    read_record(ENVIRON["LSF_RECORD"])
    print last_submission
    ids = unique_ids("")
    if (ids != "") print ids
}

# The job ids of the rows (of those in one of the states, when given), once each, ascending,
# one a line.
function unique_ids(states,    i, seen, ids, count, j, id) {
    count = 0
    for (i = 1; i <= row_count; i++) {
        if (states != "" && !index(" " states " ", " " row[i, "state"] " ")) continue
        if (row[i, "job_id"] in seen) continue
        seen[row[i, "job_id"]] = 1
        id = row[i, "job_id"]
        for (j = count; j > 0 && ids[j] + 0 > id + 0; j--) ids[j + 1] = ids[j]
        ids[j + 1] = id
        count++
    }
    id = ""
    for (j = 1; j <= count; j++) id = id (j > 1 ? "\n" : "") ids[j]
    return id
}

# Each row's state from bjobs (ENVIRON["LSF_STATES"]: "jobid|jobindex|stat|exit_code" lines):
# DONE, EXIT, RUN, PEND, SUSP, UNKNOWN (LSF forgot it), or NEVER for a pending job that waits,
# directly or not, on a job that failed (LSF keeps such jobs pending for ever).
function classify(    file, line, fields, stat, code, i, by_node, changed, deps, d, count,
                      blocker, failed) {
    read_record(ENVIRON["LSF_RECORD"])
    file = ENVIRON["LSF_STATES"]
    while ((getline line < file) > 0) {
        if (split(strip(line), fields, "|") == 4 && fields[1] ~ /^[0-9]+$/) {
            stat[fields[1], fields[2]] = fields[3]
            code[fields[1], fields[2]] = fields[4]
        }
    }
    close(file)
    for (i = 1; i <= row_count; i++) {
        by_node[row[i, "submission"], row[i, "node"]] = i
        if ((row[i, "job_id"], row[i, "index"]) in stat) {
            row[i, "state"] = stat[row[i, "job_id"], row[i, "index"]]
            row[i, "exit_code"] = code[row[i, "job_id"], row[i, "index"]]
        } else {
            row[i, "state"] = "UNKNOWN"
            row[i, "exit_code"] = "-"
        }
        if (row[i, "state"] ~ /SUSP$/) row[i, "state"] = "SUSP"
    }
    changed = 1
    while (changed) {
        changed = 0
        for (i = 1; i <= row_count; i++) {
            if (row[i, "state"] != "PEND") continue
            count = row[i, "deps"] == "-" ? 0 : split(row[i, "deps"], deps, ",")
            failed = ""
            for (d = 1; d <= count; d++) {
                if (!((row[i, "submission"], deps[d]) in by_node)) continue
                blocker = by_node[row[i, "submission"], deps[d]]
                if (row[blocker, "state"] == "EXIT" || row[blocker, "state"] == "NEVER")
                    failed = failed " " deps[d]
            }
            if (failed != "") {
                row[i, "state"] = "NEVER"
                row[i, "blocked_by"] = substr(failed, 2)
                changed = 1
            }
        }
    }
}

function job_label(i) {
    return row[i, "job_id"] (row[i, "index"] != "0" ? "[" row[i, "index"] "]" : "")
}

# The exit code of the program whose failure stopped a job: a job runs make, which exits 2
# whatever its recipe's command exited with, and says "*** [FILE:LINE: TARGET] Error N" last
# in the job's error log. Empty when the log names none (make's own error, a killed job).
# make names a program killed by a signal by the signal's description (strsignal), not by a
# code: those of the signals a job meets, as the shell's 128 + N.
function signal_code(description) {
    sub(/ \(core dumped\)$/, "", description)
    if (description == "Hangup") return 129
    if (description == "Interrupt") return 130
    if (description == "Quit") return 131
    if (description == "Illegal instruction") return 132
    if (description == "Aborted") return 134
    if (description == "Bus error") return 135
    if (description == "Floating point exception") return 136
    if (description == "Killed") return 137
    if (description == "Segmentation fault") return 139
    if (description == "Terminated") return 143
    if (description ~ /^CPU time limit exceeded/) return 152
    return ""
}

# The failed program's exit code from make's last "*** [...]" line in a job's error log:
# "Error N" gives N, a signal's description 128 + N; "make" when make stopped on its own
# error ("*** ...  Stop.") before a program failed; "" when the log names neither.
function program_exit_code(path,    line, code, tail) {
    code = ""
    if (system("test -f " shell_quote(path) " && test -r " shell_quote(path)) != 0) return code
    while ((getline line < path) > 0) {
        sub(/\r$/, "", line)
        if (line ~ /\*\*\* \[.*\] Error [0-9]+$/) {
            code = line
            sub(/.* Error /, "", code)
        } else if (line ~ /\*\*\* \[[^]]*\] [A-Z]/) {
            tail = line
            sub(/.*\*\*\* \[[^]]*\] /, "", tail)
            if (signal_code(tail) != "") code = signal_code(tail)
        } else if (line ~ /\*\*\* .*Stop\.$/) {
            code = "make"
        }
    }
    close(path)
    return code
}

# What an exit code means: those of common/exitcodes.h, the shell's, or a signal.
function exit_meaning(code, long) {
    if (code == 1) return long ? "internal error: a bug or an unexpected library failure" \
        : "internal error"
    if (code == 2) return "bad command line"
    if (code == 3) return long ? "bad input: an input is missing, unreadable or invalid; " \
        "nothing written" : "bad input"
    if (code == 4) return long ? "partial: some inputs failed and were skipped; the rest " \
        "was written" : "partial"
    if (code == 5) return long ? "output not written: disk full or permissions" \
        : "output not written"
    if (code == 126 || code == 127) return "command not found or not executable"
    if (code > 128 && code < 160) return "killed by signal " (code - 128)
    return "not an exit code of the project's programs"
}

# A failed node's exit code with its meaning: its program's when the job's log names it,
# else the job's own. Short: "exit 3 (bad input)"; long: "3, bad input: ... (make exited 2)".
function describe_failure(i, long,    code, from_log) {
    code = program_exit_code(row[i, "stderr"])
    if (code == "make")
        return long ? "make stopped before any program failed (its message is in the log " \
            "below; job exit code " row[i, "exit_code"] ")" : "make error"
    from_log = code != ""
    if (!from_log) code = row[i, "exit_code"]
    if (code !~ /^[0-9]+$/) return long ? code : "exit " code
    if (!long) return "exit " code " (" exit_meaning(code + 0, 0) ")"
    return code ", " exit_meaning(code + 0, 1) (from_log ? " (make exited " row[i, "exit_code"] \
        ")" : " (the job's exit code: its log names no failed program)")
}

# What status says of a failed job with this error log and exit code (for the tests).
function describe_log(path, job_code) {
    row[1, "stderr"] = path
    row[1, "exit_code"] = job_code
    print describe_failure(1, 1)
}

# lsf/status: a line per node, a count per state, then every failed node's logs.
function print_status(    i, width, counts, state, note, states, count, summary, lines, k) {
    classify()
    width = 0
    for (i = 1; i <= row_count; i++) {
        if (length(row[i, "node"]) > width) width = length(row[i, "node"])
        state = row[i, "state"]
        counts[state]++
        if (state == "NEVER") note = "waits on failed " row[i, "blocked_by"]
        else if (state == "EXIT") note = describe_failure(i, 0) ", log " row[i, "stderr"]
        else note = row[i, "stdout"]
        lines[i] = note
    }
    for (i = 1; i <= row_count; i++)
        printf "s%-3d %-*s  %-12s %-7s %s\n", row[i, "submission"], width, row[i, "node"],
            job_label(i), row[i, "state"], lines[i]
    count = split("DONE RUN PEND SUSP EXIT NEVER UNKNOWN", states, " ")
    summary = ""
    for (k = 1; k <= count; k++)
        if (states[k] in counts) summary = summary ", " counts[states[k]] " " states[k]
    print row_count " nodes: " substr(summary, 3)
    for (i = 1; i <= row_count; i++) {
        if (row[i, "state"] != "EXIT") continue
        printf "\nfailed: %s (job %s)\n  exit:   %s\n  output: %s\n  errors: %s\n",
            row[i, "node"], job_label(i), describe_failure(i, 1), row[i, "stdout"],
            row[i, "stderr"]
        print_log_end(row[i, "stderr"], 5)
    }
    if ("EXIT" in counts) {
        print "\nrun lsf/submit again to resubmit what is missing (it first removes the jobs " \
            "that wait on failed ones)"
        exit EXIT_PARTIAL
    }
}

# The last lines of a log, each after "  | "; a carriage return ends a line too.
function print_log_end(path, wanted,    line, count, parts, n, k, kept) {
    if (system("test -f " shell_quote(path) " && test -r " shell_quote(path)) != 0) {
        print "  | (no log yet: " path ")"
        return
    }
    count = 0
    while ((getline line < path) > 0) {
        sub(/\r$/, "", line)
        n = split(line, parts, "\r")
        if (n == 0) kept[++count % wanted] = ""
        for (k = 1; k <= n; k++) kept[++count % wanted] = parts[k]
    }
    close(path)
    for (k = count > wanted ? count - wanted + 1 : 1; k <= count; k++)
        print "  | " kept[k % wanted]
}

# lsf/kill: the last row's submission, then the unfinished jobs.
function print_unfinished(    ids) {
    classify()
    print row[row_count, "submission"]
    ids = unique_ids("RUN PEND SUSP NEVER")
    if (ids != "") print ids
}

# lsf/submit: refuses while the last submission still runs; prints its number and the jobs
# that never will (they wait on failed ones).
function check_previous(    i, active, ids) {
    classify()
    active = 0
    for (i = 1; i <= row_count; i++)
        if (index(" RUN PEND SUSP ", " " row[i, "state"] " ")) active++
    if (active)
        die(EXIT_BAD_INPUT, "submission " row[1, "submission"] " still has " active \
            " job(s) running or waiting (lsf/status); let them finish, or lsf/kill them")
    print row[1, "submission"]
    ids = unique_ids("NEVER")
    if (ids != "") print ids
}
