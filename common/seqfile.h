/* The series of a seqbuild sequences.h5 (data-layout.md), checked before anyone trusts them. */
#ifndef ICH_SEQFILE_H
#define ICH_SEQFILE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    size_t n_series, n_slices;
    int64_t *start, *length; /* n_series: a series' rows of ids, start .. start+length-1 */
    char **ids;              /* n_slices slice IDs, each series' in scan order */
} seqfile_t;

/*
 * Read /series/start, /series/length and /slices/id. Dies with EXIT_BAD_INPUT naming the file
 * and the problem when the two series columns differ in length, a series is empty or reaches
 * outside /slices, two series share a row, or a slice ID is on two rows: such a file would
 * predict some slices twice and others never.
 */
void seqfile_read(seqfile_t *seq, const char *path);

/* A fingerprint of the file's content (IDs, series): equal for equal files. */
uint64_t seqfile_fingerprint(const seqfile_t *seq);

void seqfile_free(seqfile_t *seq);

#endif
