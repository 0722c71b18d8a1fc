#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *log_prog = "ichpipe";
static log_level_t log_level = LOG_INFO;
static int progress_forced;
static pthread_mutex_t log_mutex = PTHREAD_MUTEX_INITIALIZER;
/* A progress line is on screen without its newline; messages must clear it first. */
static int progress_line_open;

void log_init(const char *program, log_level_t level)
{
    log_prog = program;
    log_level = level;
}

void log_set_level(log_level_t level) { log_level = level; }
log_level_t log_get_level(void) { return log_level; }
const char *log_program(void) { return log_prog; }

double time_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void log_emit(log_level_t level, const char *tag, const char *fmt, va_list ap)
{
    if (level > log_level)
        return;
    pthread_mutex_lock(&log_mutex);
    if (progress_line_open) {
        fputs("\r\033[K", stderr);
        progress_line_open = 0;
    }
    fprintf(stderr, "%s: %s", log_prog, tag);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    fflush(stderr);
    pthread_mutex_unlock(&log_mutex);
}

#define DEFINE_LOG(fn, level, tag)           \
    void fn(const char *fmt, ...)            \
    {                                        \
        va_list ap;                          \
        va_start(ap, fmt);                   \
        log_emit(level, tag, fmt, ap);       \
        va_end(ap);                          \
    }

DEFINE_LOG(log_error, LOG_ERROR, "error: ")
DEFINE_LOG(log_warn, LOG_WARN, "warning: ")
DEFINE_LOG(log_info, LOG_INFO, "")
DEFINE_LOG(log_debug, LOG_DEBUG, "debug: ")

struct progress {
    char label[64];
    int64_t total, done;
    double start, last_draw;
    int visible;   /* drawing at all */
    int terminal;  /* redraw in place; otherwise one line every few seconds */
    pthread_mutex_t mutex;
};

void progress_force(int on) { progress_forced = on; }

static void format_seconds(double s, char *buf, size_t len)
{
    if (s < 0 || s > 1e7)
        snprintf(buf, len, "?");
    else if (s < 60)
        snprintf(buf, len, "%.0fs", s);
    else if (s < 3600)
        snprintf(buf, len, "%dm%02ds", (int)s / 60, (int)s % 60);
    else
        snprintf(buf, len, "%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
}

static void progress_draw(progress_t *p, int final)
{
    double elapsed = time_now() - p->start;
    double rate = elapsed > 0 ? p->done / elapsed : 0;
    char eta[32], spent[32];
    format_seconds(rate > 0 ? (p->total - p->done) / rate : -1, eta, sizeof eta);
    format_seconds(elapsed, spent, sizeof spent);

    pthread_mutex_lock(&log_mutex);
    if (p->terminal)
        fputs("\r\033[K", stderr);
    fprintf(stderr, "%s: %s %lld/%lld %.1f/s", log_prog, p->label, (long long)p->done,
            (long long)p->total, rate);
    if (final)
        fprintf(stderr, " in %s", spent);
    else
        fprintf(stderr, " ETA %s", eta);
    if (p->terminal && !final) {
        progress_line_open = 1;
    } else {
        fputc('\n', stderr);
        progress_line_open = 0;
    }
    fflush(stderr);
    pthread_mutex_unlock(&log_mutex);
}

progress_t *progress_begin(const char *label, int64_t total)
{
    progress_t *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    snprintf(p->label, sizeof p->label, "%s", label);
    p->total = total;
    p->start = p->last_draw = time_now();
    p->terminal = isatty(STDERR_FILENO);
    p->visible = log_level >= LOG_INFO && (p->terminal || progress_forced);
    pthread_mutex_init(&p->mutex, NULL);
    return p;
}

void progress_add(progress_t *p, int64_t n)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mutex);
    p->done += n;
    double now = time_now();
    /* Redraw in place often on a terminal; a log file gets a line every 5 seconds. */
    double every = p->terminal ? 0.2 : 5.0;
    int draw = p->visible && now - p->last_draw >= every;
    if (draw)
        p->last_draw = now;
    pthread_mutex_unlock(&p->mutex);
    if (draw)
        progress_draw(p, 0);
}

void progress_end(progress_t *p)
{
    if (!p)
        return;
    if (p->visible)
        progress_draw(p, 1);
    pthread_mutex_destroy(&p->mutex);
    free(p);
}
