/* Exit codes shared by every program (documented in README.md and each --help). */
#ifndef ICH_EXITCODES_H
#define ICH_EXITCODES_H

enum {
    EXIT_OK = 0,        /* everything done */
    EXIT_INTERNAL = 1,  /* a bug or an unexpected library failure */
    EXIT_USAGE = 2,     /* bad command line */
    EXIT_BAD_INPUT = 3, /* an input is missing, unreadable or invalid; nothing written */
    EXIT_PARTIAL = 4,   /* some inputs failed and were skipped; the rest was written */
    EXIT_IO = 5,        /* an output could not be written (disk full, permissions) */
};

#endif
