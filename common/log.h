/* Logging to stderr with levels, and progress lines with rate and ETA. */
#ifndef ICH_LOG_H
#define ICH_LOG_H

#include <stddef.h>
#include <stdint.h>

typedef enum { LOG_QUIET = 0, LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG } log_level_t;

/* program: prefix of every message ("dcm2jpg"); verbosity from -q / -v counts. */
void log_init(const char *program, log_level_t level);
void log_set_level(log_level_t level);
log_level_t log_get_level(void);
const char *log_program(void);

void log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * A progress line: "label  done/total  rate/s  ETA". Shown on stderr when it is a terminal,
 * or always when progress_force(1) was called (--progress); never in quiet mode.
 * Safe to call progress_add from several threads.
 */
typedef struct progress progress_t;
void progress_force(int on);
progress_t *progress_begin(const char *label, int64_t total);
void progress_add(progress_t *p, int64_t n);
void progress_end(progress_t *p);

/* Seconds on a monotonic clock. */
double time_now(void);

#endif
