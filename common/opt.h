/*
 * Table-driven command-line options. Every program describes its options once; the same
 * table parses argv and prints --help (with each option's default taken from its target).
 * -h/--help, -q/--quiet, -v/--verbose and --progress are added to every table.
 */
#ifndef ICH_OPT_H
#define ICH_OPT_H

typedef enum {
    OPT_END = 0,
    OPT_FLAG,   /* int *: set to 1 */
    OPT_UNSET,  /* int *: set to 0 (for --no-X switches) */
    OPT_INT,    /* int *: parsed, range-checked with min/max */
    OPT_INT64,  /* long long * */
    OPT_DOUBLE, /* double *: parsed, range-checked with min/max */
    OPT_STRING, /* const char **: points into argv */
    OPT_CHOICE, /* const char **: must be one of the '|'-separated words in choices */
} opt_type_t;

typedef struct {
    char short_name;       /* 0 when the option has no short form */
    const char *long_name; /* without the leading "--" */
    opt_type_t type;
    void *target;
    const char *arg_name; /* shown in --help: "N", "DIR", "FILE" */
    const char *help;
    double min, max;      /* OPT_INT / OPT_INT64 / OPT_DOUBLE, inclusive; min > max means none */
    const char *choices;  /* OPT_CHOICE: "a|b|c" */
} opt_t;

typedef struct {
    const char *program;
    const char *usage;   /* after the program name: "[options] -o OUTDIR INPUT..." */
    const char *summary; /* what the program does, a few lines */
    const char *details; /* printed after the options (extra notes); may be NULL */
    const char *exit_codes; /* program-specific lines added to the common exit-code table */
    const opt_t *options;   /* ends with an entry of type OPT_END */
    int min_positional;
    int max_positional; /* -1: no limit */
} opt_spec_t;

/*
 * Parse argv. Prints help and exits 0 for --help; prints an error naming the option and
 * exits EXIT_USAGE for anything wrong. Sets the log level from -q/-v. Returns the number of
 * positional arguments, stored (in order) in *positional (points into argv).
 */
int opt_parse(const opt_spec_t *spec, int argc, char **argv, char ***positional);

/* The help text, as printed by --help (for tests and documentation). */
void opt_print_help(const opt_spec_t *spec, void *stream);

/* The command line as one string, for recording in output attributes. */
const char *opt_command_line(void);

#endif
