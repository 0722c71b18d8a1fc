#include "dist.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "exitcodes.h"
#include "log.h"

#ifdef ICH_HAVE_MPI
#include <mpi.h>
#endif
/* NCCL's id travels over MPI, and only the CUDA backend has device buffers to sum. */
#if !defined(ICH_HAVE_MPI) || !defined(ICH_HAVE_CUDA)
#undef ICH_HAVE_NCCL
#endif
#ifdef ICH_HAVE_NCCL
#include <cuda_runtime.h>
#include <nccl.h>
#endif

static struct {
    int active;
    int rank, size, local_rank, local_size;
    double timeout;
    char where[64];
} dist = {0, 0, 1, 0, 1, DIST_DEFAULT_TIMEOUT, ""};

/* The size mpirun (or another process manager) announced, 0 when not launched by one. */
static int launcher_size(void)
{
    const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"};
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v)
            return atoi(v) > 0 ? atoi(v) : 1;
    }
    return getenv("PMIX_RANK") ? 1 : 0;
}

static double timeout_from_env(void)
{
    const char *v = getenv("ICH_DIST_TIMEOUT");
    if (!v || !*v)
        return DIST_DEFAULT_TIMEOUT;
    char *end;
    double seconds = strtod(v, &end);
    if (*end != '\0' || !(seconds > 0))
        die(EXIT_USAGE, "ICH_DIST_TIMEOUT=%s: expected a number of seconds above 0", v);
    return seconds;
}

size_t dist_bucket_bytes(void)
{
    static size_t bytes;
    if (!bytes) {
        const char *v = getenv("ICH_DIST_BUCKET_MIB");
        long mib = v && *v ? atol(v) : 0;
        bytes = mib > 0 && mib < 4096 ? (size_t)mib << 20 : DIST_BUCKET_BYTES;
    }
    return bytes;
}

int dist_rank(void) { return dist.rank; }
int dist_size(void) { return dist.size; }
int dist_local_rank(void) { return dist.local_rank; }
int dist_local_size(void) { return dist.local_size; }
int dist_is_root(void) { return dist.rank == 0; }
int dist_active(void) { return dist.active; }
const char *dist_where(void) { return dist.where; }
double dist_timeout(void) { return dist.timeout; }
void dist_set_timeout(double seconds) { dist.timeout = seconds; }

dist_range_t dist_share_of(int rank, int size, size_t n, size_t batch)
{
    if (batch == 0)
        batch = 1;
    size_t batches = (n + batch - 1) / batch;
    size_t base = batches / (size_t)size, extra = batches % (size_t)size;
    size_t r = (size_t)rank;
    size_t first = r * base + (r < extra ? r : extra);
    size_t count = base + (r < extra ? 1 : 0);
    dist_range_t range = {first * batch, (first + count) * batch};
    if (range.begin > n)
        range.begin = n;
    if (range.end > n)
        range.end = n;
    return range;
}

dist_range_t dist_share(size_t n, size_t batch)
{
    return dist_share_of(dist.rank, dist.size, n, batch);
}

uint64_t dist_hash_bytes(const void *data, size_t bytes)
{
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < bytes; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

uint64_t dist_fingerprint_add(uint64_t fingerprint, const void *data, size_t bytes)
{
    return fingerprint * 0x100000001b3ull ^ dist_hash_bytes(data, bytes);
}

uint64_t dist_fingerprint_add_strings(uint64_t fingerprint, char *const *strings, size_t n)
{
    for (size_t i = 0; i < n; i++)
        fingerprint = dist_fingerprint_add(fingerprint, strings[i], strlen(strings[i]) + 1);
    return fingerprint;
}

const char *dist_device_for_rank(const char *device)
{
    static char name[32];
    if (dist.size < 2 || strcmp(device, "cuda") != 0)
        return device;
    snprintf(name, sizeof name, "cuda:%d", dist.local_rank);
    return name;
}

#ifdef ICH_HAVE_MPI

/* ---- the watchdog: a collective that waits too long ends this rank ---- */

static pthread_mutex_t watch_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t watch_cond = PTHREAD_COND_INITIALIZER;
static pthread_t watch_thread;
static int watch_running, watch_stop;
static const char *watch_call; /* the collective in progress, NULL when none */
static double watch_since;

static void *watchdog(void *unused)
{
    (void)unused;
    pthread_mutex_lock(&watch_mutex);
    while (!watch_stop) {
        if (watch_call && time_now() - watch_since > dist.timeout) {
            log_error("rank %d of %d waited more than %.0f s in %s for the other ranks: one "
                      "of them died or hangs; ending the job (ICH_DIST_TIMEOUT sets the limit)",
                      dist.rank, dist.size, dist.timeout, watch_call);
            /* This thread cannot unwind the main one, blocked inside MPI: leave at once;
             * mpirun then ends the other ranks. */
            _exit(EXIT_INTERNAL);
        }
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 200 * 1000 * 1000;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&watch_cond, &watch_mutex, &until);
    }
    pthread_mutex_unlock(&watch_mutex);
    return NULL;
}

static void roll_call(const char *call);

static void watch_begin(const char *call)
{
    roll_call(call);
    pthread_mutex_lock(&watch_mutex);
    watch_call = call;
    watch_since = time_now();
    pthread_mutex_unlock(&watch_mutex);
}

static void watch_end(void)
{
    pthread_mutex_lock(&watch_mutex);
    watch_call = NULL;
    pthread_mutex_unlock(&watch_mutex);
}

/*
 * Before each collective every rank reports to rank 0, which waits for all of them up to the
 * timeout: so it can name the ranks that never came (a blocked collective cannot), and
 * notice ranks that call the collectives in another order. A report is one small message,
 * sent eagerly: the reporting rank does not wait.
 */
enum { ROLL_CALL_TAG = 7301 };
static uint64_t roll_call_count;

static void roll_call(const char *call)
{
    roll_call_count++;
    if (dist.rank != 0) {
        MPI_Send(&roll_call_count, 1, MPI_UINT64_T, 0, ROLL_CALL_TAG, MPI_COMM_WORLD);
        return;
    }
    int others = dist.size - 1;
    uint64_t *counts = xcalloc((size_t)others, sizeof *counts);
    MPI_Request *requests = xmalloc((size_t)others * sizeof *requests);
    for (int r = 1; r <= others; r++)
        MPI_Irecv(&counts[r - 1], 1, MPI_UINT64_T, r, ROLL_CALL_TAG, MPI_COMM_WORLD,
                  &requests[r - 1]);
    double start = time_now();
    int all_came = 0;
    while (MPI_Testall(others, requests, &all_came, MPI_STATUSES_IGNORE), !all_came) {
        if (time_now() - start > dist.timeout)
            break;
        nanosleep(&(struct timespec){0, 50 * 1000}, NULL);
    }
    if (!all_came) {
        char missing[256] = "";
        for (int r = 1; r <= others; r++) {
            int came = 0;
            MPI_Test(&requests[r - 1], &came, MPI_STATUS_IGNORE);
            size_t used = strlen(missing);
            if (!came && used + 16 < sizeof missing)
                snprintf(missing + used, sizeof missing - used, "%s%d", used ? ", " : "", r);
        }
        log_error("rank(s) %s of %d did not reach %s within %.0f s (ICH_DIST_TIMEOUT): died "
                  "or hang; ending the job", missing, dist.size, call, dist.timeout);
        _exit(EXIT_INTERNAL);
    }
    for (int r = 1; r <= others; r++)
        if (counts[r - 1] != roll_call_count)
            die(EXIT_INTERNAL, "rank %d is at collective call %llu, rank 0 at %llu (%s): the "
                "ranks took different paths", r, (unsigned long long)counts[r - 1],
                (unsigned long long)roll_call_count, call);
    free(counts);
    free(requests);
}

/*
 * Ranks other than 0 log under "program[rank/size]"; only rank 0 logs progress and
 * information. Rank 0 keeps the plain name: its outputs record it as their program
 * (h5_attr_provenance), the same as one process's.
 */
static void name_this_rank(void)
{
    if (dist.size < 2)
        return;
    snprintf(dist.where, sizeof dist.where, "rank %d of %d", dist.rank, dist.size);
    if (dist.rank == 0)
        return;
    log_level_t level = log_get_level();
    if (level > LOG_WARN)
        level = LOG_WARN;
    /* The name lives as long as the process: log.c keeps the pointer. */
    log_init(xasprintf("%s[%d/%d]", log_program(), dist.rank, dist.size), level);
}

static void mpi_error_handler(MPI_Comm *comm, int *code, ...)
{
    (void)comm;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(*code, text, &len) != MPI_SUCCESS)
        snprintf(text, sizeof text, "error code %d", *code);
    log_error("rank %d of %d: MPI failed in %s: %s", dist.rank, dist.size,
              watch_call ? watch_call : "a call", text);
    _exit(EXIT_INTERNAL);
}

void dist_init(int *argc, char ***argv)
{
    int announced = launcher_size();
    dist.timeout = timeout_from_env();
    if (announced == 0 || dist.active)
        return;

    int provided;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        die(EXIT_INTERNAL, "MPI_Init_thread failed (launched by mpirun with %d ranks)",
            announced);
    dist.active = 1;
    MPI_Errhandler handler;
    MPI_Comm_create_errhandler(mpi_error_handler, &handler);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, handler);
    MPI_Comm_rank(MPI_COMM_WORLD, &dist.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &dist.size);

    /* Ranks sharing this host's memory: their order picks each one's GPU. */
    MPI_Comm local;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, dist.rank, MPI_INFO_NULL, &local);
    MPI_Comm_rank(local, &dist.local_rank);
    MPI_Comm_size(local, &dist.local_size);
    MPI_Comm_free(&local);

    name_this_rank();
    watch_stop = 0;
    if (pthread_create(&watch_thread, NULL, watchdog, NULL) != 0)
        die(EXIT_INTERNAL, "cannot start the watchdog thread");
    watch_running = 1;
    log_debug("joined the job as rank %d of %d (local %d of %d), collective timeout %.0f s",
              dist.rank, dist.size, dist.local_rank, dist.local_size, dist.timeout);
}

static void nccl_release(void);

void dist_finalize(void)
{
    if (!dist.active)
        return;
    nccl_release();
    dist_barrier();
    if (watch_running) {
        pthread_mutex_lock(&watch_mutex);
        watch_stop = 1;
        pthread_cond_signal(&watch_cond);
        pthread_mutex_unlock(&watch_mutex);
        pthread_join(watch_thread, NULL);
        watch_running = 0;
    }
    MPI_Finalize();
    dist.active = 0;
}

void dist_barrier(void)
{
    if (dist.size < 2)
        return;
    watch_begin("MPI_Barrier");
    MPI_Barrier(MPI_COMM_WORLD);
    watch_end();
}

/* In-place all-reduce in buckets: MPI counts are int, and bounded buckets bound the
 * library's temporary memory. */
static void allreduce(void *buf, size_t count, size_t elem, MPI_Datatype type, MPI_Op op,
                      const char *call)
{
    if (dist.size < 2 || count == 0)
        return;
    size_t per_bucket = dist_bucket_bytes() / elem;
    char *p = buf;
    watch_begin(call);
    for (size_t done = 0; done < count; done += per_bucket) {
        size_t n = count - done < per_bucket ? count - done : per_bucket;
        MPI_Allreduce(MPI_IN_PLACE, p + done * elem, (int)n, type, op, MPI_COMM_WORLD);
    }
    watch_end();
}

void dist_allreduce_sum_f32(float *buf, size_t count)
{
    allreduce(buf, count, sizeof *buf, MPI_FLOAT, MPI_SUM, "MPI_Allreduce(sum, float)");
}

void dist_allreduce_sum_f64(double *buf, size_t count)
{
    allreduce(buf, count, sizeof *buf, MPI_DOUBLE, MPI_SUM, "MPI_Allreduce(sum, double)");
}

void dist_allreduce_max_i64(int64_t *buf, size_t count)
{
    allreduce(buf, count, sizeof *buf, MPI_INT64_T, MPI_MAX, "MPI_Allreduce(max, int64)");
}

void dist_allreduce_min_i64(int64_t *buf, size_t count)
{
    allreduce(buf, count, sizeof *buf, MPI_INT64_T, MPI_MIN, "MPI_Allreduce(min, int64)");
}

void dist_broadcast(void *buf, size_t bytes, int root)
{
    if (dist.size < 2 || bytes == 0)
        return;
    char *p = buf;
    size_t bucket = dist_bucket_bytes();
    watch_begin("MPI_Bcast");
    for (size_t done = 0; done < bytes; done += bucket) {
        size_t n = bytes - done < bucket ? bytes - done : bucket;
        MPI_Bcast(p + done, (int)n, MPI_BYTE, root, MPI_COMM_WORLD);
    }
    watch_end();
}

/* Row counts and offsets of every rank's share, in rows (a row is one MPI element). */
static void share_layout(size_t n, size_t batch, int *counts, int *offsets)
{
    for (int r = 0; r < dist.size; r++) {
        dist_range_t s = dist_share_of(r, dist.size, n, batch);
        if (s.end > (size_t)2147483647)
            die(EXIT_INTERNAL, "dist_gather_rows: %zu rows is more than MPI counts hold", n);
        counts[r] = (int)(s.end - s.begin);
        offsets[r] = (int)s.begin;
    }
}

/* Rows of counts[r] at offsets[r] (in rows) from rank r, to rank 0 or to everyone. */
static void gatherv(const void *mine, void *all, size_t row_bytes, const int *counts,
                    const int *offsets, int everyone)
{
    if (row_bytes > (size_t)2147483647)
        die(EXIT_INTERNAL, "dist_gather_rows: rows of %zu bytes are too long", row_bytes);
    MPI_Datatype row;
    MPI_Type_contiguous((int)row_bytes, MPI_BYTE, &row);
    MPI_Type_commit(&row);
    /* MPI wants a readable send buffer even for an empty share. */
    const void *send = mine ? mine : (const void *)counts;
    watch_begin(everyone ? "MPI_Allgatherv" : "MPI_Gatherv");
    if (everyone)
        MPI_Allgatherv(send, counts[dist.rank], row, all, counts, offsets, row,
                       MPI_COMM_WORLD);
    else
        MPI_Gatherv(send, counts[dist.rank], row, all, counts, offsets, row, 0,
                    MPI_COMM_WORLD);
    watch_end();
    MPI_Type_free(&row);
}

static void gather_rows(const void *mine, void *all, size_t row_bytes, size_t n, size_t batch,
                        int everyone)
{
    dist_range_t own = dist_share(n, batch);
    if (dist.size < 2) {
        if (all && own.end > own.begin)
            memmove(all, mine, (own.end - own.begin) * row_bytes);
        return;
    }
    int *counts = xmalloc((size_t)dist.size * sizeof *counts);
    int *offsets = xmalloc((size_t)dist.size * sizeof *offsets);
    share_layout(n, batch, counts, offsets);
    gatherv(mine, all, row_bytes, counts, offsets, everyone);
    free(counts);
    free(offsets);
}

void dist_gather_counts(const void *mine, void *all, size_t row_bytes, const size_t *counts)
{
    if (dist.size < 2) {
        if (all && counts[0])
            memmove(all, mine, counts[0] * row_bytes);
        return;
    }
    int *ints = xmalloc((size_t)dist.size * sizeof *ints);
    int *offsets = xmalloc((size_t)dist.size * sizeof *offsets);
    size_t at = 0;
    for (int r = 0; r < dist.size; r++) {
        if (counts[r] > (size_t)2147483647 || at > (size_t)2147483647)
            die(EXIT_INTERNAL, "dist_gather_counts: %zu rows is more than MPI counts hold",
                at + counts[r]);
        ints[r] = (int)counts[r];
        offsets[r] = (int)at;
        at += counts[r];
    }
    gatherv(mine, all, row_bytes, ints, offsets, 0);
    free(ints);
    free(offsets);
}

int dist_check_same(uint64_t hash)
{
    if (dist.size < 2)
        return -1;
    uint64_t *all = xmalloc((size_t)dist.size * sizeof *all);
    watch_begin("MPI_Allgather(hash)");
    MPI_Allgather(&hash, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, MPI_COMM_WORLD);
    watch_end();
    int differs = -1;
    for (int r = 1; r < dist.size && differs < 0; r++)
        if (all[r] != all[0])
            differs = r;
    free(all);
    return differs;
}

#else /* no MPI in this build: one process */

void dist_init(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    dist.timeout = timeout_from_env();
    int announced = launcher_size();
    if (announced > 1)
        die(EXIT_USAGE, "launched as %d ranks, but this build has no MPI (none found, or "
                        "make MPI=0): each would redo the whole job; rebuild with OpenMPI",
            announced);
}

static void nccl_release(void);

void dist_finalize(void)
{
    nccl_release();
}

void dist_barrier(void) {}
void dist_allreduce_sum_f32(float *buf, size_t count) { (void)buf, (void)count; }
void dist_allreduce_sum_f64(double *buf, size_t count) { (void)buf, (void)count; }
void dist_allreduce_max_i64(int64_t *buf, size_t count) { (void)buf, (void)count; }
void dist_allreduce_min_i64(int64_t *buf, size_t count) { (void)buf, (void)count; }

void dist_broadcast(void *buf, size_t bytes, int root)
{
    (void)buf, (void)bytes, (void)root;
}

static void gather_rows(const void *mine, void *all, size_t row_bytes, size_t n, size_t batch,
                        int everyone)
{
    (void)everyone;
    dist_range_t own = dist_share(n, batch);
    if (all && own.end > own.begin)
        memmove(all, mine, (own.end - own.begin) * row_bytes);
}

int dist_check_same(uint64_t hash)
{
    (void)hash;
    return -1;
}

void dist_gather_counts(const void *mine, void *all, size_t row_bytes, const size_t *counts)
{
    if (all && counts[0])
        memmove(all, mine, counts[0] * row_bytes);
}

#endif

void dist_gather_rows(const void *mine, void *all, size_t row_bytes, size_t n, size_t batch)
{
    gather_rows(mine, all, row_bytes, n, batch, 0);
}

void dist_allgather_rows(const void *mine, void *all, size_t row_bytes, size_t n, size_t batch)
{
    gather_rows(mine, all, row_bytes, n, batch, 1);
}

/* ---- backend memory ---- */

static int is_host_backend(const nn_backend_t *be)
{
    return strcmp(be->name, "cpu") == 0;
}

#ifdef ICH_HAVE_NCCL

static ncclComm_t nccl_comm;
static cudaStream_t nccl_stream;
static int nccl_ready;

static void nccl_check(ncclResult_t r, const char *call)
{
    if (r != ncclSuccess)
        die(EXIT_INTERNAL, "%s failed: %s", call, ncclGetErrorString(r));
}

static void cuda_check(cudaError_t r, const char *call)
{
    if (r != cudaSuccess)
        die(EXIT_INTERNAL, "%s failed: %s", call, cudaGetErrorString(r));
}

/* One communicator on the device current now (the backend's), made at the first use. */
static void nccl_setup(void)
{
    if (nccl_ready)
        return;
    ncclUniqueId id;
    if (dist.rank == 0)
        nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    dist_broadcast(&id, sizeof id, 0);
    cuda_check(cudaStreamCreateWithFlags(&nccl_stream, cudaStreamNonBlocking),
               "cudaStreamCreate");
    watch_begin("ncclCommInitRank");
    nccl_check(ncclCommInitRank(&nccl_comm, dist.size, id, dist.rank), "ncclCommInitRank");
    watch_end();
    nccl_ready = 1;
}

static void nccl_release(void)
{
    if (!nccl_ready)
        return;
    ncclCommDestroy(nccl_comm);
    cudaStreamDestroy(nccl_stream);
    nccl_ready = 0;
}

/* NCCL_ROOT_SUM as root sums over ranks; a rank number broadcasts from it. In place, and
 * finished on return. */
enum { NCCL_ROOT_SUM = -1 };

static void nccl_collective(float *buf, size_t count, int root)
{
    nccl_setup();
    const char *call = root == NCCL_ROOT_SUM ? "ncclAllReduce" : "ncclBroadcast";
    watch_begin(call);
    ncclResult_t r = root == NCCL_ROOT_SUM
                         ? ncclAllReduce(buf, buf, count, ncclFloat32, ncclSum, nccl_comm,
                                         nccl_stream)
                         : ncclBroadcast(buf, buf, count, ncclFloat32, root, nccl_comm,
                                         nccl_stream);
    nccl_check(r, call);
    cuda_check(cudaStreamSynchronize(nccl_stream), "cudaStreamSynchronize");
    watch_end();
}

#else

static void nccl_release(void) {}

#endif

const char *dist_allreduce_path(const nn_backend_t *be)
{
    if (dist.size < 2)
        return "none";
    if (is_host_backend(be))
        return "mpi";
#ifdef ICH_HAVE_NCCL
    return "nccl";
#else
    return "mpi-host-copy";
#endif
}

#ifndef ICH_HAVE_NCCL
/* Device memory through a host buffer, for builds without NCCL. */
static float *host_staging(size_t count)
{
    static float *staging;
    static size_t staging_count;
    if (count > staging_count) {
        free(staging);
        staging = xmalloc(count * sizeof *staging);
        staging_count = count;
    }
    return staging;
}
#endif

/* Sum (root < 0) or broadcast from root a backend's floats, in place. */
static void backend_collective(nn_backend_t *be, float *buf, size_t count, int root)
{
    if (dist.size < 2 || count == 0)
        return;
    if (is_host_backend(be)) {
        if (root < 0)
            dist_allreduce_sum_f32(buf, count);
        else
            dist_broadcast(buf, count * sizeof *buf, root);
        return;
    }
    be->synchronize(be);
#ifdef ICH_HAVE_NCCL
    nccl_collective(buf, count, root < 0 ? NCCL_ROOT_SUM : root);
#else
    float *host = host_staging(count);
    be->to_host(be, host, buf, count * sizeof *host);
    if (root < 0)
        dist_allreduce_sum_f32(host, count);
    else
        dist_broadcast(host, count * sizeof *host, root);
    be->to_device(be, buf, host, count * sizeof *host);
#endif
}

void dist_allreduce_backend(nn_backend_t *be, float *buf, size_t count)
{
    backend_collective(be, buf, count, -1);
}

void dist_broadcast_backend(nn_backend_t *be, float *buf, size_t count, int root)
{
    backend_collective(be, buf, count, root);
}

char *dist_broadcast_path(char *path)
{
    if (dist_size() < 2)
        return path;
    char chosen[4096] = "";
    if (dist_is_root() && path)
        snprintf(chosen, sizeof chosen, "%s", path);
    dist_broadcast(chosen, sizeof chosen, 0);
    free(path);
    return chosen[0] ? xstrdup(chosen) : NULL;
}
