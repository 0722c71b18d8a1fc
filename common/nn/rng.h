/*
 * The engine's seeded random numbers: xoshiro256** seeded through splitmix64. Small, fast,
 * and its whole state is four words, so a checkpoint saves and restores it exactly
 * (common/nn/checkpoint.h): a resumed run draws the same numbers as an uninterrupted one.
 */
#ifndef ICH_NN_RNG_H
#define ICH_NN_RNG_H

#include <stdint.h>

#define NN_RNG_ALGORITHM "xoshiro256**"

typedef struct {
    uint64_t s[4];
} nn_rng_t;

/* The state for a seed: s[i] = the i-th splitmix64 output from state seed (never all zero). */
void nn_rng_seed(nn_rng_t *rng, uint64_t seed);
uint64_t nn_rng_next(nn_rng_t *rng);
/* Uniform in [0, 1) with 53 random bits. */
double nn_rng_uniform(nn_rng_t *rng);
/* Uniform integer in [0, n), without modulo bias; n > 0. */
uint64_t nn_rng_below(nn_rng_t *rng, uint64_t n);

#endif
