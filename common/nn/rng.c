/* xoshiro256** with splitmix64 seeding (see rng.h). */
#include "nn/rng.h"

static uint64_t rotate_left(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

void nn_rng_seed(nn_rng_t *rng, uint64_t seed)
{
    /* splitmix64 spreads any seed, 0 included, over the four words. */
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) {
        x += 0x9E3779B97F4A7C15ull;
        uint64_t z = x;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        rng->s[i] = z ^ (z >> 31);
    }
}

uint64_t nn_rng_next(nn_rng_t *rng)
{
    uint64_t *s = rng->s;
    uint64_t result = rotate_left(s[1] * 5, 7) * 9;
    uint64_t shifted = s[1] << 17;

    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= shifted;
    s[3] = rotate_left(s[3], 45);
    return result;
}

double nn_rng_uniform(nn_rng_t *rng)
{
    return (double)(nn_rng_next(rng) >> 11) * 0x1.0p-53;
}

uint64_t nn_rng_below(nn_rng_t *rng, uint64_t n)
{
    /* Reject the lowest (2^64 mod n) values so that every residue is equally likely. */
    uint64_t threshold = (0 - n) % n;
    for (;;) {
        uint64_t r = nn_rng_next(rng);
        if (r >= threshold)
            return r % n;
    }
}
