/*
 * Running one program as N cooperating processes (ranks) under `mpirun -np N`: data-parallel
 * training and inference sharded over ranks.
 *
 * Launched without mpirun (no OMPI_COMM_WORLD_SIZE, PMI_SIZE or PMIX_RANK in the environment)
 * or built without MPI, a program is one rank of one: MPI is never initialised, every call
 * below is a cheap no-op or a copy, and the program behaves exactly as a plain process.
 *
 * Faults: a rank that exits or is killed makes mpirun end the others (OpenMPI's default).
 * A rank that stops answering is caught within the timeout (ICH_DIST_TIMEOUT seconds,
 * default 1800): before each collective call every rank reports to rank 0, which names the
 * ranks that did not come and the call; and a watchdog ends any rank whose collective waits
 * longer, naming it and the call. Either exits EXIT_INTERNAL and mpirun ends the job.
 * Ranks that reach the collectives in different orders are reported by rank 0 the same way.
 * MPI errors print the rank and the failing call and exit EXIT_INTERNAL.
 */
#ifndef ICH_DIST_H
#define ICH_DIST_H

#include <stddef.h>
#include <stdint.h>

#include "nn/nn.h"

#define DIST_DEFAULT_TIMEOUT 1800.0

/*
 * Join the job when launched by mpirun (MPI_Init_thread, error handler, watchdog), and
 * prefix the log messages of ranks other than 0 with their rank ("cnntrain[1/2]"), those
 * ranks logging warnings and errors only; rank 0 keeps the program's name, which its outputs
 * record. Call after log_init and opt_parse.
 */
void dist_init(int *argc, char ***argv);
/* Leave the job (MPI_Finalize) on success; a failing rank exits without it (mpirun ends the
 * others). Safe to call when dist_init did not join a job. */
void dist_finalize(void);

int dist_rank(void);       /* 0 .. size - 1 */
int dist_size(void);       /* ranks in the job; 1 without mpirun */
int dist_local_rank(void); /* rank among those on this host (a GPU per local rank) */
int dist_local_size(void);
int dist_is_root(void);    /* rank 0: the one that writes outputs, logs and progress */
int dist_active(void);     /* launched by mpirun with MPI compiled in */
/* "rank 1 of 2" for messages ("" when the job has one rank). */
const char *dist_where(void);

/* Seconds a collective may wait for the other ranks before this rank gives up. */
double dist_timeout(void);
void dist_set_timeout(double seconds);

void dist_barrier(void);
/* Sum count values over ranks, in place, in buckets of dist_bucket_bytes() (host memory). */
void dist_allreduce_sum_f32(float *buf, size_t count);
void dist_allreduce_sum_f64(double *buf, size_t count);
/* Maximum and minimum over ranks, in place. */
void dist_allreduce_max_i64(int64_t *buf, size_t count);
void dist_allreduce_min_i64(int64_t *buf, size_t count);
/* Copy root's bytes to every rank (host memory). */
void dist_broadcast(void *buf, size_t bytes, int root);
/* Rank 0's path (a heap string, or NULL) on every rank; takes ownership of path (other
 * ranks' argument is ignored and freed). Paths up to 4095 bytes. */
char *dist_broadcast_path(char *path);

/* Bytes per all-reduce call: ICH_DIST_BUCKET_MIB, default DIST_BUCKET_BYTES. */
#define DIST_BUCKET_BYTES ((size_t)64 << 20)
size_t dist_bucket_bytes(void);

/*
 * Sum count floats of a backend's memory over ranks, in place: a host-memory backend ("cpu")
 * goes through dist_allreduce_sum_f32; a device backend through NCCL when the build has it
 * (one communicator on the device current at the first call, its id broadcast over MPI), or
 * else through a host copy. Waits for the backend first and for the sum before returning.
 */
void dist_allreduce_backend(nn_backend_t *be, float *buf, size_t count);
/* The backend name a rank should open for a device option: "cuda" becomes "cuda:L" for local
 * rank L when the job has several ranks (one GPU each); anything else is returned as is.
 * The string is static. */
const char *dist_device_for_rank(const char *device);
/* Copy root's count floats of backend memory to every rank. */
void dist_broadcast_backend(nn_backend_t *be, float *buf, size_t count, int root);
/* Which path dist_allreduce_backend takes for be: "none" (one rank), "mpi", "nccl" or
 * "mpi-host-copy". */
const char *dist_allreduce_path(const nn_backend_t *be);

/*
 * Sharding in whole batches: n items cut into batches of `batch` (the last one may be
 * short), exactly the batches one process forms; rank r takes a contiguous run of them, the
 * first n_batches % size ranks one batch more. A rank may get none (begin == end).
 */
typedef struct {
    size_t begin, end; /* items [begin, end) */
} dist_range_t;

dist_range_t dist_share_of(int rank, int size, size_t n, size_t batch);
dist_range_t dist_share(size_t n, size_t batch); /* this rank's share */

/*
 * Gather the rows of every rank's share (dist_share(n, batch)), row_bytes each, into all
 * (n rows, the original order) on rank 0; other ranks may pass all = NULL. mine holds this
 * rank's rows. Without a job it copies mine into all.
 */
void dist_gather_rows(const void *mine, void *all, size_t row_bytes, size_t n, size_t batch);
/* The same, every rank receiving all n rows. */
void dist_allgather_rows(const void *mine, void *all, size_t row_bytes, size_t n, size_t batch);
/*
 * Gather counts[r] rows, row_bytes each, from every rank r into all on rank 0, rank after
 * rank; counts is the same on every rank, and other ranks may pass all = NULL. For work
 * handed out in rounds (a batch of each rank's share at a time). Without a job it copies
 * mine into all.
 */
void dist_gather_counts(const void *mine, void *all, size_t row_bytes, const size_t *counts);

/*
 * A 64-bit hash (FNV-1a) of bytes, and a check that it is equal on every rank: returns -1
 * when it is, or the lowest rank whose hash differs from rank 0's.
 */
uint64_t dist_hash_bytes(const void *data, size_t bytes);
int dist_check_same(uint64_t hash);

/* A fingerprint of an input, extended by bytes or by strings (each with its terminating 0):
 * the hashes of the parts chained, so that a resumed run can check it reads the same. */
uint64_t dist_fingerprint_add(uint64_t fingerprint, const void *data, size_t bytes);
uint64_t dist_fingerprint_add_strings(uint64_t fingerprint, char *const *strings, size_t n);

#endif
