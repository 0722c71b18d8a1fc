#include "fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "exitcodes.h"
#include "log.h"

int path_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

int path_is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int path_is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int path_same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

/*
 * Every missing folder down to path, outermost first. output, when given, is the file they
 * are made for, named first in a failure; made, when given, collects the folders made here.
 */
static void make_folders(const char *path, const char *output, strlist_t *made)
{
    if (!*path)
        die(EXIT_IO, "cannot create a folder with an empty name");
    char *lead = output ? xasprintf("cannot create %s: ", output) : xstrdup("");
    char *p = xstrdup(path);
    for (char *s = p + 1;; s++) {
        int last = *s == 0;
        if (!last && *s != '/')
            continue;
        *s = 0;
        if (mkdir(p, 0777) == 0) {
            if (made)
                strlist_push(made, p);
        } else if (errno != EEXIST) {
            die(EXIT_IO, "%scannot create folder %s: %s", lead, p, strerror(errno));
        }
        if (last)
            break;
        *s = '/';
    }
    if (!path_is_dir(path))
        die(EXIT_IO, "%s%s exists and is not a folder", lead, path);
    free(p);
    free(lead);
}

void mkdir_p(const char *path)
{
    make_folders(path, NULL, NULL);
}

void mkdir_p_created(const char *path, strlist_t *made)
{
    make_folders(path, NULL, made);
}

void rmdir_created(const strlist_t *made)
{
    /* Innermost first; a folder something was written into stays, and so do its parents. */
    for (size_t i = made->count; i-- > 0;)
        rmdir(made->items[i]);
}

void output_path_check(const char *option, const char *path, const char *example)
{
    size_t n = strlen(path);
    int slash = n && path[n - 1] == '/', folder = path_is_dir(path);
    if (!folder && n && !slash)
        return;
    const char *what = folder ? "is a folder" : n ? "ends in '/'" : "is empty";
    if (example && n)
        die(EXIT_USAGE, "%s %s %s: name the output file (e.g. %s%s%s)", option, path, what,
            path, slash ? "" : "/", example);
    die(EXIT_USAGE, "%s '%s' %s: name the output file", option, path, what);
}

int folder_lock(const char *dir, int wait, const char *program)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        die(EXIT_IO, "cannot open folder %s: %s", dir, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB) == 0)
        return fd;
    if (errno != EWOULDBLOCK) {
        log_warn("%s: cannot lock this folder (%s): never run two %s into it at once", dir,
                 strerror(errno), program);
        return fd;
    }
    if (!wait)
        die(EXIT_BAD_INPUT, "another %s is writing into %s now: let it finish, or give another "
                            "folder", program, dir);
    log_info("another %s is writing into %s: waiting for it to finish", program, dir);
    while (flock(fd, LOCK_EX) != 0 && errno == EINTR)
        continue;
    return fd;
}

void output_dir_check(const char *option, const char *path)
{
    if (path_exists(path) && !path_is_dir(path))
        die(EXIT_USAGE, "%s %s exists and is not a folder", option, path);
}

char *path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir);
    if (n == 0)
        return xstrdup(name);
    return xasprintf("%s%s%s", dir, dir[n - 1] == '/' ? "" : "/", name);
}

const char *path_basename(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

char *path_stem(const char *path)
{
    char *stem = xstrdup(path_basename(path));
    char *dot = strrchr(stem, '.');
    if (dot && dot != stem)
        *dot = 0;
    return stem;
}

int path_has_ext(const char *path, const char *ext)
{
    size_t n = strlen(path), m = strlen(ext);
    return n >= m && strcasecmp(path + n - m, ext) == 0;
}

/* The folders from the walk's root down to the one being read, to recognise loops. */
typedef struct walk_level {
    dev_t dev;
    ino_t ino;
    const struct walk_level *parent;
} walk_level_t;

typedef struct {
    strlist_t *files, *problem_paths, *problem_reasons;
} walk_t;

static void walk_problem(walk_t *w, const char *path, const char *reason)
{
    strlist_push(w->problem_paths, path);
    strlist_push(w->problem_reasons, reason);
}

static void walk_into(walk_t *w, const char *dir, const walk_level_t *level)
{
    DIR *d = opendir(dir);
    if (!d) {
        char *reason = xasprintf("cannot read folder: %s", strerror(errno));
        walk_problem(w, dir, reason);
        free(reason);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char *path = path_join(dir, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0) {
            int saved = errno;
            struct stat link;
            int dangling = saved == ENOENT && lstat(path, &link) == 0 && S_ISLNK(link.st_mode);
            char *reason = dangling ? xasprintf("broken symbolic link (its target is missing)")
                                    : xasprintf("cannot read: %s", strerror(saved));
            walk_problem(w, path, reason);
            free(reason);
        } else if (S_ISDIR(st.st_mode)) {
            const walk_level_t *up = level;
            while (up && !(up->dev == st.st_dev && up->ino == st.st_ino))
                up = up->parent;
            if (up)
                log_info("%s: leads back to a folder being walked (a link loop); not followed",
                         path);
            else {
                walk_level_t next = {st.st_dev, st.st_ino, level};
                walk_into(w, path, &next);
            }
        } else if (S_ISREG(st.st_mode)) {
            strlist_push(w->files, path);
        }
        free(path);
    }
    closedir(d);
}

void walk_files_report(const char *dir, strlist_t *out, strlist_t *problem_paths,
                       strlist_t *problem_reasons)
{
    size_t first = out->count;
    walk_t w = {out, problem_paths, problem_reasons};
    struct stat st;
    walk_level_t root = {0, 0, NULL};
    int have_root = stat(dir, &st) == 0;
    if (have_root) {
        root.dev = st.st_dev;
        root.ino = st.st_ino;
    }
    walk_into(&w, dir, have_root ? &root : NULL);
    if (out->count > first) /* an empty list may have no array at all */
        qsort(out->items + first, out->count - first, sizeof *out->items, compare_strings);
}

void walk_files(const char *dir, strlist_t *out)
{
    strlist_t paths = {0}, reasons = {0};
    walk_files_report(dir, out, &paths, &reasons);
    for (size_t i = 0; i < paths.count; i++)
        log_warn("%s: %s", paths.items[i], reasons.items[i]);
    strlist_free(&paths);
    strlist_free(&reasons);
}

void read_list_file(const char *path, strlist_t *out)
{
    /* The user's file: its name and the reason, not this code's location. */
    FILE *f = fopen(path, "r");
    if (!f)
        die(EXIT_BAD_INPUT, "%s: cannot read the list file: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) >= 0) {
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' '))
            line[--n] = 0;
        if (n == 0 || line[0] == '#')
            continue;
        strlist_push(out, line);
    }
    free(line);
    fclose(f);
}

/*
 * Live temporary files, removed if the process is interrupted or exits early, so that a
 * killed run never leaves something that looks like an output. A fixed table keeps the signal
 * handler free of locks and allocation.
 */
#define TMP_SLOTS 256
static char *tmp_slots[TMP_SLOTS];
static atomic_int tmp_handlers_installed;
static pthread_mutex_t tmp_mutex = PTHREAD_MUTEX_INITIALIZER;
static atomic_long tmp_counter;

static void tmp_remove_all(void)
{
    for (int i = 0; i < TMP_SLOTS; i++)
        if (tmp_slots[i])
            unlink(tmp_slots[i]);
}

static void tmp_on_signal(int sig)
{
    tmp_remove_all();
    signal(sig, SIG_DFL);
    raise(sig);
}

static void tmp_install_handlers(void)
{
    int expected = 0;
    if (!atomic_compare_exchange_strong(&tmp_handlers_installed, &expected, 1))
        return;
    atexit(tmp_remove_all);
    signal(SIGINT, tmp_on_signal);
    signal(SIGTERM, tmp_on_signal);
    signal(SIGHUP, tmp_on_signal);
}

static void tmp_register(char *path)
{
    tmp_install_handlers();
    pthread_mutex_lock(&tmp_mutex);
    for (int i = 0; i < TMP_SLOTS; i++) {
        if (!tmp_slots[i]) {
            tmp_slots[i] = path;
            break;
        }
    }
    pthread_mutex_unlock(&tmp_mutex);
}

static void tmp_unregister(const char *path)
{
    pthread_mutex_lock(&tmp_mutex);
    for (int i = 0; i < TMP_SLOTS; i++) {
        if (tmp_slots[i] && strcmp(tmp_slots[i], path) == 0) {
            char *p = tmp_slots[i];
            tmp_slots[i] = NULL;
            free(p);
            break;
        }
    }
    pthread_mutex_unlock(&tmp_mutex);
}

char *tmp_path_for(const char *final_path)
{
    const char *base = path_basename(final_path);
    size_t dirlen = (size_t)(base - final_path);

    /* Every program makes the folders its outputs go into, the same way. */
    if (dirlen) {
        int keep = dirlen > 1 ? (int)dirlen - 1 : 1; /* without the slash, "/" kept */
        char *dir = xasprintf("%.*s", keep, final_path);
        if (!path_is_dir(dir))
            make_folders(dir, final_path, NULL);
        free(dir);
    }

    long n = atomic_fetch_add(&tmp_counter, 1);
    char *tmp = xasprintf("%.*s.%s.tmp-%ld-%ld", (int)dirlen, final_path, base, (long)getpid(),
                          n);
    tmp_register(xstrdup(tmp));
    return tmp;
}

int tmp_create(const char *tmp_path, const char *final_path)
{
    int fd = open(tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0)
        die(EXIT_IO, "cannot create %s: %s", final_path, strerror(errno));
    return fd;
}

int tmp_commit(const char *tmp_path, const char *final_path)
{
    int rc = rename(tmp_path, final_path);
    int saved = errno;
    if (rc != 0)
        unlink(tmp_path);
    tmp_unregister(tmp_path);
    errno = saved;
    return rc;
}

void tmp_discard(const char *tmp_path)
{
    unlink(tmp_path);
    tmp_unregister(tmp_path);
}

/*
 * The PID in a temporary's name ".NAME.tmp-PID-N", or 0 when the name is not one of ours.
 * The last ".tmp-" counts: NAME itself may contain one.
 */
static long tmp_owner_pid(const char *name)
{
    const char *mark = NULL;
    for (const char *p = strstr(name, ".tmp-"); p; p = strstr(p + 1, ".tmp-"))
        mark = p;
    if (name[0] != '.' || !mark || mark[5] < '0' || mark[5] > '9')
        return 0;
    char *end;
    errno = 0;
    long pid = strtol(mark + 5, &end, 10);
    /* Only a positive PID: kill() reads 0 and negative ones as process groups. */
    if (errno || pid <= 0 || pid > INT_MAX || end == mark + 5 || *end != '-' || !end[1])
        return 0;
    for (const char *p = end + 1; *p; p++)
        if (*p < '0' || *p > '9')
            return 0;
    return pid;
}

/* Has pid exited but not yet been reaped (a zombie, state Z or X in /proc/PID/stat)? A
 * killed writer stays one until its parent waits for it, and writes nothing more. */
static int pid_zombie(long pid)
{
    char path[64], stat_line[512];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(stat_line, 1, sizeof stat_line - 1, f);
    fclose(f);
    stat_line[n] = '\0';
    /* "PID (COMM) STATE ...": COMM may hold spaces and parentheses, so the last ')' counts. */
    const char *close = strrchr(stat_line, ')');
    return close && close[1] == ' ' && (close[2] == 'Z' || close[2] == 'X');
}

/* Is pid a process of this host's PID namespace (alive, or not ours to signal)? */
static int pid_alive(long pid)
{
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH)
        return 0;
    return !pid_zombie(pid);
}

/* tmp_sweep of the temporaries in dir whose names start with prefix (any, when NULL). */
static int sweep_dead_writers(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int removed = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (prefix && strncmp(e->d_name, prefix, strlen(prefix)) != 0)
            continue;
        long pid = tmp_owner_pid(e->d_name);
        /* A live writer's file, this process's own included, is still being made. */
        if (pid == 0 || pid == (long)getpid() || pid_alive(pid))
            continue;
        char *path = path_join(dir, e->d_name);
        if (unlink(path) == 0)
            removed++;
        free(path);
    }
    closedir(d);
    return removed;
}

int tmp_sweep(const char *dir)
{
    return sweep_dead_writers(dir, NULL);
}

int tmp_sweep_for(const char *final_path)
{
    const char *base = path_basename(final_path);
    char *dir = base == final_path ? xstrdup(".")
                                   : xasprintf("%.*s", (int)(base - final_path), final_path);
    char *prefix = xasprintf(".%s.tmp-", base);
    int removed = sweep_dead_writers(dir, prefix);
    free(prefix);
    free(dir);
    return removed;
}
