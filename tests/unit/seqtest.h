/* The sequence-model tests' shared setup (test_nn_lstm, test_nn_lstm_full). */
#ifndef ICH_TEST_SEQTEST_H
#define ICH_TEST_SEQTEST_H

#include <string.h>

#include "check.h"
#include "log.h"
#include "nn/params.h"
#include "nn/seqmodel.h"

/*
 * A sequence model in this precision with the hashed weights tests/ref/'s scripts compute
 * too, and Adam's moments; *initial gets a copy of its weights (the caller frees it).
 */
static inline seqmodel_t *seq_hashed_model(nn_backend_t *be, int width, int hidden,
                                           int original, int precision, float **initial)
{
    char err[256];
    seqmodel_t *m = seqmodel_create(be, width, hidden, original, err, sizeof(err));
    if (!m)
        die(1, "seqmodel_create: %s", err);
    if (seqmodel_set_precision(m, precision) != precision)
        die(1, "seqmodel_set_precision: precision %d is not available", precision);
    nn_paramset_t *ps = &m->ps;
    nn_params_fill_hashed(ps);
    nn_params_alloc_adam(ps);
    *initial = xmalloc(ps->param_count * sizeof(float));
    memcpy(*initial, ps->params, ps->param_count * sizeof(float));
    return m;
}

#endif
