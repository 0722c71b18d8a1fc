#include "opt.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "exitcodes.h"
#include "log.h"

#ifndef ICH_VERSION
#define ICH_VERSION "unknown"
#endif

static char *command_line;

const char *opt_command_line(void) { return command_line ? command_line : ""; }

static void record_command_line(int argc, char **argv)
{
    size_t len = 1;
    for (int i = 0; i < argc; i++)
        len += strlen(argv[i]) + 3;
    free(command_line);
    command_line = xmalloc(len);
    command_line[0] = 0;
    for (int i = 0; i < argc; i++) {
        int quote = argv[i][0] == 0 || strpbrk(argv[i], " \t'\"$") != NULL;
        if (i)
            strcat(command_line, " ");
        if (quote)
            strcat(command_line, "'");
        strcat(command_line, argv[i]);
        if (quote)
            strcat(command_line, "'");
    }
}

static const char *COMMON_EXIT_CODES =
    "  0  success\n"
    "  1  internal error (a bug, or a library failing unexpectedly)\n"
    "  2  bad command line\n"
    "  3  bad input: missing, unreadable or invalid; nothing written\n"
    "  4  some inputs failed and were skipped; the rest was written\n"
    "  5  an output could not be written\n";

static void format_default(const opt_t *o, char *buf, size_t len)
{
    char range[64] = "";
    if (o->min <= o->max && (o->type == OPT_INT || o->type == OPT_INT64))
        snprintf(range, sizeof range, "; %.0f..%.0f", o->min, o->max);
    else if (o->min <= o->max && o->type == OPT_DOUBLE)
        snprintf(range, sizeof range, "; %g..%g", o->min, o->max);

    buf[0] = 0;
    switch (o->type) {
    case OPT_FLAG:
        if (*(int *)o->target)
            snprintf(buf, len, " (on by default)");
        break;
    case OPT_UNSET:
        break;
    case OPT_INT:
        snprintf(buf, len, " (default: %d%s)", *(int *)o->target, range);
        break;
    case OPT_INT64:
        snprintf(buf, len, " (default: %lld%s)", *(long long *)o->target, range);
        break;
    case OPT_DOUBLE:
        snprintf(buf, len, " (default: %g%s)", *(double *)o->target, range);
        break;
    case OPT_STRING:
    case OPT_CHOICE: {
        const char *v = *(const char **)o->target;
        if (v)
            snprintf(buf, len, " (default: %s)", v);
        break;
    }
    case OPT_END:
        break;
    }
}

void opt_print_help(const opt_spec_t *spec, void *stream)
{
    FILE *f = stream;
    fprintf(f, "Usage: %s %s\n\n%s\n\nOptions:\n", spec->program, spec->usage, spec->summary);
    for (const opt_t *o = spec->options; o && o->type != OPT_END; o++) {
        char left[64], def[128];
        const char *arg = o->arg_name ? o->arg_name : "";
        if (o->type == OPT_CHOICE && !o->arg_name)
            arg = o->choices;
        int has_arg = o->type != OPT_FLAG && o->type != OPT_UNSET;
        if (o->short_name)
            snprintf(left, sizeof left, "-%c, --%s%s%s", o->short_name, o->long_name,
                     has_arg ? " " : "", has_arg ? arg : "");
        else
            snprintf(left, sizeof left, "    --%s%s%s", o->long_name, has_arg ? " " : "",
                     has_arg ? arg : "");
        format_default(o, def, sizeof def);
        fprintf(f, "  %-26s %s%s\n", left, o->help, def);
        if (o->type == OPT_CHOICE && o->arg_name)
            fprintf(f, "  %-26s one of: %s\n", "", o->choices);
    }
    fprintf(f, "  %-26s %s\n", "-q, --quiet", "errors only");
    fprintf(f, "  %-26s %s\n", "-v, --verbose", "more detail (twice: debug)");
    fprintf(f, "  %-26s %s\n", "    --progress", "progress lines even when stderr is no terminal");
    fprintf(f, "  %-26s %s\n", "    --version", "print the version and exit");
    fprintf(f, "  %-26s %s\n", "-h, --help", "this text");
    if (spec->details)
        fprintf(f, "\n%s\n", spec->details);
    fprintf(f, "\nExit codes:\n%s", COMMON_EXIT_CODES);
    if (spec->exit_codes)
        fprintf(f, "%s", spec->exit_codes);
}

static void usage_error(const opt_spec_t *spec, const char *fmt, const char *what)
{
    fprintf(stderr, "%s: error: ", spec->program);
    fprintf(stderr, fmt, what);
    fprintf(stderr, "\nTry '%s --help'.\n", spec->program);
    exit(EXIT_USAGE);
}

static int choice_ok(const char *choices, const char *value)
{
    size_t n = strlen(value);
    for (const char *c = choices; *c;) {
        const char *end = strchr(c, '|');
        size_t len = end ? (size_t)(end - c) : strlen(c);
        if (len == n && strncmp(c, value, n) == 0)
            return 1;
        if (!end)
            break;
        c = end + 1;
    }
    return 0;
}

static void set_value(const opt_spec_t *spec, const opt_t *o, const char *value)
{
    char *end;
    int has_range = o->min <= o->max;
    errno = 0;
    switch (o->type) {
    case OPT_INT:
    case OPT_INT64: {
        long long v = strtoll(value, &end, 10);
        if (errno || end == value || *end)
            usage_error(spec, "--%s needs an integer", o->long_name);
        if (has_range && (v < o->min || v > o->max)) {
            char msg[160];
            snprintf(msg, sizeof msg, "--%s %s is out of range [%.0f, %.0f]", o->long_name,
                     value, o->min, o->max);
            usage_error(spec, "%s", msg);
        }
        if (o->type == OPT_INT)
            *(int *)o->target = (int)v;
        else
            *(long long *)o->target = v;
        break;
    }
    case OPT_DOUBLE: {
        double v = strtod(value, &end);
        if (errno || end == value || *end || v != v)
            usage_error(spec, "--%s needs a number", o->long_name);
        if (has_range && (v < o->min || v > o->max)) {
            char msg[160];
            snprintf(msg, sizeof msg, "--%s %s is out of range [%g, %g]", o->long_name, value,
                     o->min, o->max);
            usage_error(spec, "%s", msg);
        }
        *(double *)o->target = v;
        break;
    }
    case OPT_CHOICE:
        if (!choice_ok(o->choices, value)) {
            char msg[256];
            snprintf(msg, sizeof msg, "--%s must be one of %s, not '%s'", o->long_name,
                     o->choices, value);
            usage_error(spec, "%s", msg);
        }
        *(const char **)o->target = value;
        break;
    case OPT_STRING:
        *(const char **)o->target = value;
        break;
    default:
        break;
    }
}

int opt_parse(const opt_spec_t *spec, int argc, char **argv, char ***positional)
{
    record_command_line(argc, argv);
    char **pos = xcalloc((size_t)argc + 1, sizeof *pos);
    int npos = 0, verbose = 0, quiet = 0, only_positional = 0;

    for (int i = 1; i < argc; i++) {
        char *arg = argv[i];
        if (only_positional || arg[0] != '-' || arg[1] == 0) {
            pos[npos++] = arg;
            continue;
        }
        if (strcmp(arg, "--") == 0) {
            only_positional = 1;
            continue;
        }

        /* Built-in options first. */
        if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
            opt_print_help(spec, stdout);
            exit(EXIT_OK);
        }
        if (!strcmp(arg, "--version")) {
            printf("%s (ichpipe) %s\n", spec->program, ICH_VERSION);
            exit(EXIT_OK);
        }
        if (!strcmp(arg, "-q") || !strcmp(arg, "--quiet")) {
            quiet = 1;
            continue;
        }
        if (!strcmp(arg, "-v") || !strcmp(arg, "--verbose")) {
            verbose++;
            continue;
        }
        if (!strcmp(arg, "-vv")) {
            verbose += 2;
            continue;
        }
        if (!strcmp(arg, "--progress")) {
            progress_force(1);
            continue;
        }

        const opt_t *match = NULL;
        const char *inline_value = NULL;
        if (arg[1] == '-') {
            const char *name = arg + 2;
            const char *eq = strchr(name, '=');
            size_t len = eq ? (size_t)(eq - name) : strlen(name);
            for (const opt_t *o = spec->options; o && o->type != OPT_END; o++)
                if (strlen(o->long_name) == len && strncmp(o->long_name, name, len) == 0)
                    match = o;
            if (eq)
                inline_value = eq + 1;
        } else {
            for (const opt_t *o = spec->options; o && o->type != OPT_END; o++)
                if (o->short_name == arg[1])
                    match = o;
            if (arg[2])
                inline_value = arg + 2;
        }
        if (!match)
            usage_error(spec, "unknown option '%s'", arg);

        if (match->type == OPT_FLAG || match->type == OPT_UNSET) {
            if (inline_value)
                usage_error(spec, "option '%s' takes no value", arg);
            *(int *)match->target = match->type == OPT_FLAG;
            continue;
        }
        const char *value = inline_value;
        if (!value) {
            if (i + 1 >= argc)
                usage_error(spec, "option '%s' needs a value", arg);
            value = argv[++i];
        }
        set_value(spec, match, value);
    }

    if (quiet)
        log_set_level(LOG_ERROR);
    else if (verbose)
        log_set_level(LOG_DEBUG);

    if (npos < spec->min_positional)
        usage_error(spec, "%s", spec->min_positional == 1 ? "an input is required"
                                                          : "too few arguments");
    if (spec->max_positional >= 0 && npos > spec->max_positional)
        usage_error(spec, "unexpected argument '%s'", pos[spec->max_positional]);
    *positional = pos;
    return npos;
}
