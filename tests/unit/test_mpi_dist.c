/*
 * The distribution layer (common/dist.h) with however many ranks it is started as: alone (as
 * tests/run.sh runs it: one rank, MPI never started) or under `mpirun -np N`
 * (tests/t_mpi_dist.sh runs N = 2 and 3). Every expected value is computed here in integers
 * that floats hold exactly, so sums must be exact.
 *
 * Fault drills for tests/t_mpi_dist.sh: --stop-rank R (rank R stops itself before a barrier:
 * the others' watchdog must end the job), --exit-rank R (rank R exits 3 before a barrier).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dist.h"
#include "expect.h"
#include "log.h"

/* Shares: contiguous, whole batches in the order one process forms them, balanced. */
static void test_shares(void)
{
    const size_t counts[] = {0, 1, 7, 8, 9, 64, 103, 1000};
    const size_t batches[] = {1, 3, 8, 16};
    for (int size = 1; size <= 5; size++)
        for (size_t a = 0; a < sizeof counts / sizeof *counts; a++)
            for (size_t b = 0; b < sizeof batches / sizeof *batches; b++) {
                size_t n = counts[a], batch = batches[b], next = 0;
                size_t most = 0, least = (size_t)-1;
                for (int r = 0; r < size; r++) {
                    dist_range_t s = dist_share_of(r, size, n, batch);
                    EXPECT(s.begin == next);
                    EXPECT(s.end >= s.begin && s.end <= n);
                    EXPECT(s.begin % batch == 0 || s.begin == n);
                    EXPECT(s.end % batch == 0 || s.end == n);
                    size_t whole = (s.end - s.begin + batch - 1) / batch;
                    most = whole > most ? whole : most;
                    least = whole < least ? whole : least;
                    next = s.end;
                }
                EXPECT(next == n);
                EXPECT(most - least <= 1);
            }
    printf("shares: contiguous, whole batches, balanced for 1-5 ranks\n");
}

/* Sums over more than one bucket, in each type. */
static void test_reductions(void)
{
    int rank = dist_rank(), size = dist_size();
    size_t count = dist_bucket_bytes() / sizeof(float) + 4099;
    float *values = malloc(count * sizeof *values);
    for (size_t i = 0; i < count; i++)
        values[i] = (float)((i % 1000) * (size_t)(rank + 1));
    double start = time_now();
    dist_allreduce_sum_f32(values, count);
    double seconds = time_now() - start;
    size_t wrong = 0;
    double ranks_sum = size * (size + 1) / 2.0;
    for (size_t i = 0; i < count; i++)
        wrong += values[i] != (float)((double)(i % 1000) * ranks_sum);
    EXPECT(wrong == 0);
    size_t buckets = (count * sizeof(float) + dist_bucket_bytes() - 1) / dist_bucket_bytes();
    printf("rank %d: float sum of %zu values (%zu buckets) over %d ranks in %.3f s, %zu wrong\n",
           rank, count, buckets, size, seconds, wrong);
    free(values);

    double d[3] = {rank + 0.5, 1.0, -2.0 * rank};
    dist_allreduce_sum_f64(d, 3);
    EXPECT(d[0] == ranks_sum - size + 0.5 * size);
    EXPECT(d[1] == size);
    EXPECT(d[2] == -2.0 * (ranks_sum - size));

    int64_t hi[2] = {rank, -rank}, lo[2] = {rank, -rank};
    dist_allreduce_max_i64(hi, 2);
    dist_allreduce_min_i64(lo, 2);
    EXPECT(hi[0] == size - 1 && hi[1] == 0);
    EXPECT(lo[0] == 0 && lo[1] == -(size - 1));
}

static void test_broadcast(void)
{
    int rank = dist_rank(), size = dist_size();
    int root = size - 1;
    char text[32];
    snprintf(text, sizeof text, "from rank %d", rank);
    dist_broadcast(text, sizeof text, root);
    char expected[32];
    snprintf(expected, sizeof expected, "from rank %d", root);
    EXPECT(strcmp(text, expected) == 0);
}

/* Each rank fills its share's rows; rank 0 (and, for allgather, everyone) sees all n rows in
 * the original order. */
static void test_gather(size_t n, size_t batch)
{
    enum { WIDTH = 3 };
    dist_range_t own = dist_share(n, batch);
    size_t mine_rows = own.end - own.begin;
    int32_t *mine = malloc((mine_rows ? mine_rows : 1) * WIDTH * sizeof *mine);
    for (size_t i = 0; i < mine_rows; i++)
        for (int k = 0; k < WIDTH; k++)
            mine[i * WIDTH + k] = (int32_t)((own.begin + i) * WIDTH + (size_t)k);
    int32_t *all = malloc((n ? n : 1) * WIDTH * sizeof *all);

    memset(all, 0xff, (n ? n : 1) * WIDTH * sizeof *all);
    dist_gather_rows(mine, dist_is_root() ? all : NULL, WIDTH * sizeof *mine, n, batch);
    size_t wrong = 0;
    if (dist_is_root())
        for (size_t i = 0; i < n * WIDTH; i++)
            wrong += all[i] != (int32_t)i;
    EXPECT(wrong == 0);

    memset(all, 0xff, (n ? n : 1) * WIDTH * sizeof *all);
    dist_allgather_rows(mine, all, WIDTH * sizeof *mine, n, batch);
    size_t wrong_all = 0;
    for (size_t i = 0; i < n * WIDTH; i++)
        wrong_all += all[i] != (int32_t)i;
    EXPECT(wrong_all == 0);
    if (dist_is_root())
        printf("gather of %zu rows in batches of %zu over %d ranks: %zu wrong at rank 0, "
               "%zu in the all-gather\n", n, batch, dist_size(), wrong, wrong_all);
    free(mine);
    free(all);
}

static void test_same(void)
{
    uint64_t same = dist_hash_bytes("weights", 7);
    EXPECT(dist_check_same(same) == -1);
    uint64_t mine = dist_rank() == 0 ? same : same + (uint64_t)dist_rank();
    EXPECT(dist_check_same(mine) == (dist_size() > 1 ? 1 : -1));
    EXPECT(dist_hash_bytes("a", 1) != dist_hash_bytes("b", 1));
}

/* The CPU backend's memory goes through MPI; every rank ends with the sum. */
static void test_backend(void)
{
    nn_backend_t *be = nn_backend_create("cpu");
    size_t count = 1000;
    float *buf = be->alloc(be, count * sizeof *buf);
    for (size_t i = 0; i < count; i++)
        buf[i] = (float)i;
    dist_allreduce_backend(be, buf, count);
    size_t wrong = 0;
    for (size_t i = 0; i < count; i++)
        wrong += buf[i] != (float)(i * (size_t)dist_size());
    EXPECT(wrong == 0);
    EXPECT(strcmp(dist_allreduce_path(be), dist_size() > 1 ? "mpi" : "none") == 0);

    for (size_t i = 0; i < count; i++)
        buf[i] = (float)(dist_rank() * 7);
    dist_broadcast_backend(be, buf, count, 0);
    EXPECT(buf[0] == 0 && buf[count - 1] == 0);
    EXPECT(strcmp(dist_device_for_rank("cpu"), "cpu") == 0);
    be->release(be, buf);
    be->destroy(be);
}

int main(int argc, char **argv)
{
    log_init("test_mpi_dist", LOG_INFO);
    dist_init(&argc, &argv);
    int stop_rank = -1, exit_rank = -1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--stop-rank"))
            stop_rank = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--exit-rank"))
            exit_rank = atoi(argv[i + 1]);
    }
    if (stop_rank >= 0 || exit_rank >= 0) {
        fprintf(stderr, "rank %d of %d: pid %ld, drill: stop rank %d, exit rank %d\n",
                dist_rank(), dist_size(), (long)getpid(), stop_rank, exit_rank);
        if (dist_rank() == stop_rank)
            raise(SIGSTOP);
        if (dist_rank() == exit_rank)
            exit(3);
        dist_barrier();
        fprintf(stderr, "rank %d: the barrier returned, which it must not\n", dist_rank());
        dist_finalize();
        return 0;
    }

    printf("rank %d of %d (local %d of %d), active %d\n", dist_rank(), dist_size(),
           dist_local_rank(), dist_local_size(), dist_active());
    EXPECT(dist_size() >= 1 && dist_rank() >= 0 && dist_rank() < dist_size());
    EXPECT(dist_is_root() == (dist_rank() == 0));
    EXPECT(dist_active() == (getenv("OMPI_COMM_WORLD_SIZE") != NULL));
    test_shares();
    test_reductions();
    test_broadcast();
    test_gather(103, 8);
    test_gather(5, 8);
    test_gather(0, 4);
    test_gather(64, 16);
    test_same();
    test_backend();

    /* Every rank's verdict, so that each exits with the job's. */
    double failed = failures;
    dist_allreduce_sum_f64(&failed, 1);
    if (dist_is_root())
        printf("%s: %.0f failed checks over %d ranks\n", failed ? "FAIL" : "ok", failed,
               dist_size());
    dist_finalize();
    return failed ? 1 : 0;
}
