"""A local stand-in for an LSF cluster, for the tests of lsf/: bsub, bjobs and bkill check
their options against the syntax of IBM Spectrum LSF 10.1's documentation (anything unknown or
malformed is refused loudly), record jobs in $LSF_STANDIN_DIR, and `lsfrun` runs the recorded
jobs on this machine in dependency order: -w conditions, job arrays (%I, LSB_JOBINDEX), exit
statuses. Jobs whose condition can never hold stay pending, as on LSF. Stricter than LSF in
one place: a -J name may not hold blanks (lsf/submit's names never do; -w would need them).

State: $LSF_STANDIN_DIR/jobs/<id>.json (one per job), next_id, lock, refused.log (every refused
command, so that a test can fail on one even when the caller swallowed the error)."""

import fcntl
import json
import os
import re
import signal
import sys
import time

FIRST_JOB_ID = 1001
MAX_ARRAY_INDEX = 1000  # LSF's default MAX_JOB_ARRAY_SIZE
STATES_FINISHED = ("DONE", "EXIT")


class Refused(Exception):
    """A command line LSF would refuse."""


def state_dir():
    path = os.environ.get("LSF_STANDIN_DIR")
    if not path:
        sys.stderr.write("LSF stand-in: set LSF_STANDIN_DIR to its state folder\n")
        sys.exit(255)
    os.makedirs(os.path.join(path, "jobs"), exist_ok=True)
    return path


class Locked:
    """One process at a time reads and changes the state."""

    def __enter__(self):
        self.file = open(os.path.join(state_dir(), "lock"), "a")
        fcntl.flock(self.file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def refuse(command, argv, message):
    """Prints LSF's kind of error, logs the refusal, exits 255 (LSF commands' failure code)."""
    with open(os.path.join(state_dir(), "refused.log"), "a") as log:
        log.write("%s %s: %s\n" % (command, " ".join(argv), message))
    sys.stderr.write("%s: %s\n" % (command, message))
    sys.exit(255)


def job_path(job_id):
    return os.path.join(state_dir(), "jobs", "%d.json" % job_id)


def load_jobs():
    jobs = {}
    folder = os.path.join(state_dir(), "jobs")
    for name in os.listdir(folder):
        if name.endswith(".json"):
            with open(os.path.join(folder, name)) as f:
                job = json.load(f)
            jobs[job["id"]] = job
    return jobs


def save_job(job):
    path = job_path(job["id"])
    with open(path + ".new", "w") as f:
        json.dump(job, f, indent=1)
    os.replace(path + ".new", path)


def next_job_id():
    path = os.path.join(state_dir(), "next_id")
    job_id = int(open(path).read()) if os.path.exists(path) else FIRST_JOB_ID
    with open(path, "w") as f:
        f.write("%d\n" % (job_id + 1))
    return job_id


# --- Option syntax (bsub) ---

NAME_CHARS = re.compile(r"^[A-Za-z0-9._-]+$")
POSITIVE = re.compile(r"^[1-9][0-9]*$")


def parse_job_name(value):
    """-J job_name | -J "job_name[index_list]%job_slot_limit": (name, indices, slot limit)."""
    m = re.match(r"^([^\[\]]*)\[([^\]]*)\](?:%([0-9]+))?$", value)
    if not m:
        if "[" in value or "]" in value:
            raise Refused("-J %s: malformed job array specification" % value)
        if not value or len(value) > 4094 or any(c.isspace() for c in value):
            raise Refused("-J %r: a job name is 1 to 4094 characters, no blanks" % value)
        return value, None, None
    name, index_list, limit = m.groups()
    if not NAME_CHARS.match(name):
        raise Refused("-J %s: an array name is made of a-z A-Z 0-9 . - _" % value)
    if limit is not None and not POSITIVE.match(limit):
        raise Refused("-J %s: the job slot limit must be a positive integer" % value)
    indices = []
    for item in index_list.split(","):
        m = re.match(r"^\s*([0-9]+)(?:-([0-9]+)(?::([0-9]+))?)?\s*$", item)
        if not m:
            raise Refused("-J %s: index list items are start[-end[:step]]" % value)
        start, end, step = (int(x) if x else None for x in m.groups())
        end = start if end is None else end
        step = 1 if step is None else step
        if start < 1 or end < start or step < 1:
            raise Refused("-J %s: indices are positive and start <= end" % value)
        indices.extend(range(start, end + 1, step))
    if len(set(indices)) != len(indices):
        raise Refused("-J %s: an index appears twice" % value)
    if max(indices) > MAX_ARRAY_INDEX:
        raise Refused("-J %s: index above MAX_JOB_ARRAY_SIZE (%d)" % (value, MAX_ARRAY_INDEX))
    return name, sorted(indices), int(limit) if limit else None


GPU_KEYS = {
    "num": re.compile(r"^[1-9][0-9]*(/(task|host))?$"),
    "mode": re.compile(r"^(shared|exclusive_process)$"),
    "mps": re.compile(r"^(no|(yes|per_socket|per_gpu)(,(shared|nocvd))*)$"),
    "j_exclusive": re.compile(r"^(yes|no)$"),
    "aff": re.compile(r"^(yes|no)$"),
    "block": re.compile(r"^(yes|no)$"),
    "gpack": re.compile(r"^(yes|no)$"),
    "gvendor": re.compile(r"^(amd|nvidia)$"),
    "gmodel": re.compile(r"^[A-Za-z0-9_]+(-[0-9]+[KMGT]?B?)?$"),
    "gtile": re.compile(r"^([1-9][0-9]*|!|'!')$"),
    "gmem": re.compile(r"^[0-9]+[KMGT]?B?$"),
    "glink": re.compile(r"^yes$"),
    "mig": re.compile(r"^[1-7](/[1-7])?$"),
}


def check_gpu(value):
    """-gpu - | "[num=N[/task|host]][:mode=...][:mps=...]..." (bsub -gpu synopsis)."""
    if value == "-":
        return
    seen = set()
    for part in value.split(":"):
        key, eq, val = part.partition("=")
        if not eq or key not in GPU_KEYS:
            raise Refused("-gpu %s: unknown requirement %r" % (value, part))
        if key in seen:
            raise Refused("-gpu %s: %s given twice" % (value, key))
        if not GPU_KEYS[key].match(val):
            raise Refused("-gpu %s: bad value for %s: %r" % (value, key, val))
        if key == "mode" and val == "exclusive_process" and "gvendor=amd" in value:
            raise Refused("-gpu %s: exclusive_process is not for AMD GPUs" % value)
        seen.add(key)


def check_slots(value):
    """-n min_tasks[,max_tasks]"""
    m = re.match(r"^([1-9][0-9]*)(?:,([1-9][0-9]*))?$", value)
    if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
        raise Refused("-n %s: expected min_tasks[,max_tasks], positive, min <= max" % value)
    return int(m.group(1))


RES_SECTIONS = ("select", "order", "rusage", "span", "same", "cu", "affinity")
SPAN_VALUE = re.compile(r"^(hosts=(1|-1)|ptile=([1-9][0-9]*|!|'!')|block=[1-9][0-9]*)$")


def check_resources(value):
    """-R "res_req": sections name[...] of the resource requirement string; span[] in full."""
    rest = value.strip()
    if not rest:
        raise Refused("-R: empty resource requirement")
    while rest:
        m = re.match(r"^(\w+)\[", rest)
        if not m or m.group(1) not in RES_SECTIONS:
            raise Refused("-R %s: expected one of %s[...] at %r"
                          % (value, "/".join(RES_SECTIONS), rest))
        depth, i = 0, m.end() - 1
        for i in range(m.end() - 1, len(rest)):
            depth += {"[": 1, "]": -1}.get(rest[i], 0)
            if depth == 0:
                break
        if depth:
            raise Refused("-R %s: unbalanced brackets" % value)
        body = rest[m.end():i]
        if not body.strip():
            raise Refused("-R %s: empty %s[]" % (value, m.group(1)))
        if m.group(1) == "span" and not all(SPAN_VALUE.match(p) for p in body.split(":")):
            raise Refused("-R %s: span[] takes hosts=1|-1, ptile=N or block=N" % value)
        rest = rest[i + 1:].strip()


def check_memory(value):
    """-M mem_limit[!] with an optional unit (KB K MB M GB G TB T PB P EB E ZB Z)."""
    if not re.match(r"^[1-9][0-9]*([KMGTPEZ]B?)?!?$", value):
        raise Refused("-M %s: expected an integer, optional unit (KB, MB, GB...), optional !"
                      % value)


def check_run_limit(value):
    """-W [hour:]minute[/host_name | /host_model]: minutes below 60 after an hour."""
    m = re.match(r"^(?:([0-9]+):)?([0-9]+)(?:/[A-Za-z0-9._-]+)?$", value)
    if not m or (m.group(1) is not None and int(m.group(2)) > 59):
        raise Refused("-W %s: expected [hour:]minute" % value)
    if int(m.group(1) or 0) * 60 + int(m.group(2)) == 0:
        raise Refused("-W %s: a run limit of zero" % value)


def check_queue(value):
    if not value.split() or not all(NAME_CHARS.match(q) for q in value.split()):
        raise Refused("-q %r: expected queue names" % value)


def check_plain_name(option, value):
    if not value or not NAME_CHARS.match(value):
        raise Refused("%s %r: expected a name of a-z A-Z 0-9 . - _" % (option, value))


def check_file(option, value):
    if not value or value.startswith("-") or len(value) > 4094:
        raise Refused("%s %r: expected a file path (up to 4094 characters)" % (option, value))


def parse_env(value):
    """-env "none" | "all[, ~var...][, var=value...]" | "var[=value][, ...]": returns
    (base, changes): base 'all' or 'none' or 'listed', changes a list of (name, value|None)."""
    items = []
    current, quoted = "", False
    for c in value:
        if c == "'":
            quoted = not quoted
        elif c == "," and not quoted:
            items.append(current.strip())
            current = ""
            continue
        current += c
    if quoted:
        raise Refused("-env %s: unbalanced single quote" % value)
    items.append(current.strip())
    if items == ["none"]:
        return "none", []
    base = "listed"
    if items[0] == "all":
        base, items = "all", items[1:]
    changes = []
    for item in items:
        name, eq, val = item.partition("=")
        removed = name.startswith("~")
        if removed:
            name = name[1:]
            if base != "all" or eq:
                raise Refused("-env %s: ~%s only after all, without a value" % (value, name))
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name) or name in ("none", "all"):
            raise Refused("-env %s: bad variable name %r" % (value, item))
        if val.startswith("'") and val.endswith("'") and len(val) >= 2:
            val = val[1:-1]
        changes.append((name, None if removed else (val if eq else os.environ.get(name, ""))))
    return base, changes


# Options with a value, and what checks it; flags take no value.
VALUE_OPTIONS = {
    "-J": None, "-w": None, "-gpu": check_gpu, "-n": check_slots, "-R": check_resources,
    "-M": check_memory, "-W": check_run_limit, "-We": check_run_limit, "-q": check_queue,
    "-P": lambda v: check_plain_name("-P", v), "-app": lambda v: check_plain_name("-app", v),
    "-G": lambda v: check_plain_name("-G", v), "-o": lambda v: check_file("-o", v),
    "-oo": lambda v: check_file("-oo", v), "-e": lambda v: check_file("-e", v),
    "-eo": lambda v: check_file("-eo", v), "-cwd": lambda v: check_file("-cwd", v),
    "-env": parse_env,
}
FLAG_OPTIONS = ("-x", "-r", "-rn", "-B", "-N")
REPEATABLE = ("-R",)


def parse_bsub(argv):
    """Options (each once, -R may repeat) then the command; returns (options, command)."""
    options, i = {}, 0
    while i < len(argv) and argv[i].startswith("-"):
        opt = argv[i]
        if opt in FLAG_OPTIONS:
            value = True
        elif opt in VALUE_OPTIONS:
            if i + 1 >= len(argv):
                raise Refused("%s: missing value" % opt)
            value = argv[i + 1]
            i += 1
            if VALUE_OPTIONS[opt]:
                VALUE_OPTIONS[opt](value)
        else:
            raise Refused("%s: unknown option (not in the stand-in's list of LSF options)" % opt)
        if opt in options and opt not in REPEATABLE:
            raise Refused("%s given twice" % opt)
        options.setdefault(opt, []).append(value)
        i += 1
    if i == len(argv):
        raise Refused("no command (the stand-in does not read job scripts from stdin)")
    for a, b in (("-o", "-oo"), ("-e", "-eo")):
        if a in options and b in options:
            raise Refused("%s and %s together" % (a, b))
    return {k: (v if k in REPEATABLE else v[0]) for k, v in options.items()}, argv[i:]


# --- Dependency expressions (bsub -w) ---

TOKEN = re.compile(r"""\s*(?:(&&|\|\||!=|==|>=|<=|[!(),<>*])|("[^"]*")|([A-Za-z0-9_.\-\[\]*]+))""")
CONDITIONS = ("done", "ended", "exit", "started")
COUNTS = ("numdone", "numended", "numexit", "numrun", "numpend", "numstart")
UNSUPPORTED = ("post_done", "post_err", "external", "numhold")


def tokenize(text):
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].isspace():
            break
        m = TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise Refused("-w '%s': unexpected text at %r" % (text, text[pos:]))
        tokens.append(m.group(1) or m.group(2) or m.group(3))
        pos = m.end()
    return tokens


def parse_ref(token, text):
    """A job: job_ID, job_ID[index], "job_name", "job_name[index]" (or unquoted when the name
    does not begin with a digit); a trailing * in a name matches every name so beginning."""
    quoted = token.startswith('"')
    body = token[1:-1] if quoted else token
    m = re.match(r"^([^\[\]]+)(?:\[([1-9][0-9]*)\])?$", body)
    if not m:
        raise Refused("-w '%s': bad job reference %s" % (text, token))
    ident, index = m.group(1), int(m.group(2)) if m.group(2) else None
    if not quoted and ident.isdigit():
        return ("id", int(ident), index)
    if not quoted and ident[0].isdigit():
        raise Refused("-w '%s': job names beginning with a digit need double quotes" % text)
    if "*" in ident[:-1]:
        raise Refused("-w '%s': the wildcard * only ends a job name" % text)
    return ("name", ident, index)


def parse_dependency(text):
    """Parses the expression into a tree; refuses anything outside LSF's syntax."""
    tokens = tokenize(text)
    pos = [0]

    def peek():
        return tokens[pos[0]] if pos[0] < len(tokens) else None

    def take(expected=None):
        tok = peek()
        if tok is None or (expected and tok != expected):
            raise Refused("-w '%s': expected %s" % (text, expected or "more"))
        pos[0] += 1
        return tok

    def chain(operator, kind, operand):
        """operand (operator operand)*, left to right."""
        node = operand()
        while peek() == operator:
            take()
            node = (kind, node, operand())
        return node

    def expr():
        return chain("||", "or", term)

    def term():
        return chain("&&", "and", unary)

    def unary():
        tok = peek()
        if tok == "!":
            take()
            return ("not", unary())
        if tok == "(":
            take()
            node = expr()
            take(")")
            return node
        tok = take()
        if peek() == "(":
            if tok in UNSUPPORTED:
                raise Refused("-w '%s': %s() is LSF syntax the stand-in does not run"
                              % (text, tok))
            if tok not in CONDITIONS + COUNTS:
                raise Refused("-w '%s': unknown condition %s()" % (text, tok))
            take("(")
            ref = parse_ref(take(), text)
            op, number = None, None
            if peek() == ",":
                take()
                if peek() in ("==", "!=", ">", "<", ">=", "<="):
                    op = take()
                number = take()
                if number != "*" and not number.isdigit():
                    raise Refused("-w '%s': expected a number after the comma" % text)
                if tok in CONDITIONS and tok != "exit":
                    raise Refused("-w '%s': %s() takes one job" % (text, tok))
                if number == "*" and tok not in COUNTS:
                    raise Refused("-w '%s': * only in num*() conditions" % text)
            elif tok in COUNTS:
                raise Refused("-w '%s': %s() needs a count" % (text, tok))
            take(")")
            return ("cond", tok, ref, op or "==", number)
        if tok in ("&&", "||", ")", ",", "*") or tok in CONDITIONS + COUNTS:
            raise Refused("-w '%s': unexpected %s" % (text, tok))
        return ("cond", "done", parse_ref(tok, text), "==", None)

    if not tokens:
        raise Refused("-w: empty dependency expression")
    tree = expr()
    if peek() is not None:
        raise Refused("-w '%s': unexpected %s" % (text, peek()))
    return tree


def references(tree):
    if tree[0] == "cond":
        return [tree[2]]
    return [r for sub in tree[1:] for r in references(sub)]


def elements_of(ref, jobs):
    """The (job, index) pairs a reference names."""
    kind, ident, index = ref
    if kind == "id":
        matched = [jobs[ident]] if ident in jobs else []
    elif ident.endswith("*"):
        matched = [j for j in jobs.values() if j["name"].startswith(ident[:-1])]
    else:
        matched = [j for j in jobs.values() if j["name"] == ident]
    found = []
    for job in matched:
        for key in job["elements"]:
            if index is None or int(key) == index:
                found.append((job, key))
    return found


def compare(a, op, b):
    return {"==": a == b, "!=": a != b, ">": a > b, "<": a < b, ">=": a >= b,
            "<=": a <= b}[op]


def evaluate(tree, jobs):
    kind = tree[0]
    if kind == "and":
        return evaluate(tree[1], jobs) and evaluate(tree[2], jobs)
    if kind == "or":
        return evaluate(tree[1], jobs) or evaluate(tree[2], jobs)
    if kind == "not":
        return not evaluate(tree[1], jobs)
    _, cond, ref, op, number = tree
    elements = [job["elements"][key] for job, key in elements_of(ref, jobs)]
    states = [e["state"] for e in elements]
    if cond == "done":
        return bool(states) and all(s == "DONE" for s in states)
    if cond == "ended":
        return bool(states) and all(s in STATES_FINISHED for s in states)
    if cond == "started":
        return bool(states) and all(s != "PEND" for s in states)
    if cond == "exit":
        return bool(states) and all(
            e["state"] == "EXIT" and (number is None or compare(e["exit_code"], op, int(number)))
            for e in elements)
    counted = {"numdone": ("DONE",), "numended": STATES_FINISHED, "numexit": ("EXIT",),
               "numrun": ("RUN",), "numpend": ("PEND",),
               "numstart": ("RUN", "DONE", "EXIT")}[cond]
    count = sum(1 for s in states if s in counted)
    return count == len(states) if number == "*" else compare(count, op, int(number))


def expand_log_name(pattern, job_id, index):
    return pattern.replace("%J", str(job_id)).replace("%I", str(index))


def kill_element(element):
    """Pending: never starts. Running: SIGINT then SIGTERM (LSF's order); returns the process
    group for the caller to SIGKILL if it outlives a grace period."""
    if element["state"] == "PEND":
        element["state"], element["exit_code"], element["killed"] = "EXIT", 130, True
    elif element["state"] == "RUN" and element.get("pid"):
        element["killed"] = True
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                os.killpg(element["pid"], sig)
            except ProcessLookupError:
                return None
        return element["pid"]
    return None


def finish_kill(pgid, grace=3.0):
    deadline = time.time() + grace
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
