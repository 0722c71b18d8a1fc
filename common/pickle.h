/*
 * A minimal, safe reader of Python pickle streams (protocols 2 to 5, binary opcodes), enough
 * for PyTorch checkpoints. It never executes anything: a class or function reference
 * (GLOBAL) becomes an inert value naming it, and calling it (REDUCE, NEWOBJ) builds an
 * object that only records the callable, its arguments and its state. Every length read
 * from the stream is checked against the bytes that remain before anything is allocated.
 * Persistent ids (torch's storages) become PK_PERSID values holding the id object.
 *
 * Values live in the reader's arena and are freed together by pk_free; strings and bytes
 * point into the caller's buffer, which must outlive the reader.
 */
#ifndef ICH_PICKLE_H
#define ICH_PICKLE_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    PK_NONE,
    PK_BOOL,
    PK_INT,     /* fits in int64 */
    PK_BIGINT,  /* a longer integer: its little-endian two's complement bytes */
    PK_FLOAT,
    PK_STR,     /* unicode (UTF-8) or a Python 2 byte string */
    PK_BYTES,
    PK_TUPLE,
    PK_LIST,
    PK_SET,     /* set or frozenset: its items */
    PK_DICT,    /* dict or OrderedDict, insertion order kept */
    PK_GLOBAL,  /* a reference to module.name, never resolved */
    PK_OBJECT,  /* the result of calling a global: callable, args, state, items */
    PK_PERSID,  /* a persistent id: the object in id */
} pk_kind_t;

typedef struct pk_value pk_value_t;

struct pk_value {
    pk_kind_t kind;
    int64_t i;            /* PK_BOOL, PK_INT */
    double f;             /* PK_FLOAT */
    const char *s;        /* PK_STR, PK_BYTES, PK_BIGINT (not NUL-terminated) */
    size_t len;           /* of s */
    pk_value_t **items;   /* TUPLE, LIST, SET; DICT: key, value, key, value ... */
    size_t n, cap;        /* items used (DICT: 2 per entry), allocated */
    const char *module, *name; /* PK_GLOBAL (NUL-terminated, arena) */
    pk_value_t *callable; /* PK_OBJECT: the global that was called */
    pk_value_t *args;     /* PK_OBJECT: its arguments (a tuple); PK_PERSID: the id */
    pk_value_t *state;    /* PK_OBJECT: what BUILD gave it (often a dict); else NULL */
    pk_value_t *dict;     /* PK_OBJECT: items set on it (SETITEMS on a dict subclass) */
    pk_value_t *list;     /* PK_OBJECT: items appended to it (a list subclass) */
};

typedef struct pk_reader pk_reader_t;

pk_reader_t *pk_new(void);
void pk_free(pk_reader_t *r);

/*
 * Unpickle the stream starting at data[*pos] (size bytes in all). On success returns the
 * value and sets *pos just after its STOP opcode. On failure returns NULL and sets the
 * reader's error (pk_error): unknown opcode, truncated stream, stack underflow, too-deep
 * nesting, a size larger than what remains.
 */
pk_value_t *pk_load(pk_reader_t *r, const uint8_t *data, size_t size, size_t *pos);
const char *pk_error(const pk_reader_t *r);

/* Helpers for the consumers. */
int pk_is_str(const pk_value_t *v, const char *s);             /* PK_STR equal to s */
int pk_is_global(const pk_value_t *v, const char *module, const char *name);
pk_value_t *pk_dict_get(const pk_value_t *dict, const char *key); /* by string key; or NULL */
/* The value as a NUL-terminated copy in the arena (for PK_STR, PK_BYTES; else NULL). */
const char *pk_cstr(pk_reader_t *r, const pk_value_t *v);
const char *pk_kind_name(pk_kind_t kind);
/* Every value the reader has made so far, in order of creation. */
pk_value_t *const *pk_values(const pk_reader_t *r, size_t *n);

#endif
