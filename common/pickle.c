/* A safe pickle reader for protocols 2 to 5 (see pickle.h). */
#include "pickle.h"

#include "check.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Nesting of MARKs deeper than this is refused (no real checkpoint comes near). */
#define MARK_DEPTH_MAX 100000
/* Objects made, stack entries and memo indexes allowed: a checkpoint of ResNeXt-101 pickled
 * whole makes about 10^5; a hostile stream of one-byte opcodes could otherwise make memory
 * grow a hundredfold over its size. */
#define OBJECTS_MAX (1u << 22)
/* Dicts up to this many entries replace a repeated key (see set_items). */
#define DICT_DEDUP_MAX 65536

struct pk_reader {
    pk_value_t **values; /* every value made, for pk_free */
    size_t n_values, cap_values;
    char **strings; /* arena strings */
    size_t n_strings, cap_strings;
    pk_value_t **stack;
    size_t n_stack, cap_stack;
    size_t *marks;
    size_t n_marks, cap_marks;
    pk_value_t **memo;
    size_t n_memo;
    size_t ops; /* opcodes run: bounds the memo indexes a well-formed stream can use */
    char error[256];
};

static void grow(void **array, size_t *cap, size_t need, size_t item)
{
    if (need <= *cap)
        return;
    size_t cap2 = *cap ? *cap * 2 : 16;
    while (cap2 < need)
        cap2 *= 2;
    *array = xrealloc(*array, cap2 * item);
    *cap = cap2;
}

pk_reader_t *pk_new(void)
{
    return xcalloc(1, sizeof(pk_reader_t));
}

void pk_free(pk_reader_t *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n_values; i++) {
        free(r->values[i]->items);
        free(r->values[i]);
    }
    for (size_t i = 0; i < r->n_strings; i++)
        free(r->strings[i]);
    free(r->values);
    free(r->strings);
    free(r->stack);
    free(r->marks);
    free(r->memo);
    free(r);
}

const char *pk_error(const pk_reader_t *r)
{
    return r->error;
}

static pk_value_t *make(pk_reader_t *r, pk_kind_t kind)
{
    pk_value_t *v = xcalloc(1, sizeof(*v));
    v->kind = kind;
    grow((void **)&r->values, &r->cap_values, r->n_values + 1, sizeof(*r->values));
    r->values[r->n_values++] = v;
    return v;
}

static char *arena_string(pk_reader_t *r, const char *s, size_t len)
{
    char *copy = xmalloc(len + 1);
    memcpy(copy, s, len);
    copy[len] = 0;
    grow((void **)&r->strings, &r->cap_strings, r->n_strings + 1, sizeof(*r->strings));
    r->strings[r->n_strings++] = copy;
    return copy;
}

static void add_item(pk_value_t *container, pk_value_t *item)
{
    grow((void **)&container->items, &container->cap, container->n + 1,
         sizeof(*container->items));
    container->items[container->n++] = item;
}

/* ---- the machine --------------------------------------------------------------------------- */

typedef struct {
    pk_reader_t *r;
    const uint8_t *data;
    size_t size, pos;
    size_t op_pos; /* where the current opcode started, for messages */
} machine_t;

static int fail(machine_t *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(machine_t *m, const char *fmt, ...)
{
    char what[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    snprintf(m->r->error, sizeof(m->r->error), "pickle byte %zu: %s", m->op_pos, what);
    return -1;
}

/* n bytes from the stream, or NULL (error set) when fewer remain. */
static const uint8_t *take(machine_t *m, size_t n)
{
    if (n > m->size - m->pos) {
        fail(m, "truncated: %zu bytes needed, %zu left", n, m->size - m->pos);
        return NULL;
    }
    const uint8_t *p = m->data + m->pos;
    m->pos += n;
    return p;
}

static int read_uint(machine_t *m, size_t n, uint64_t *value)
{
    const uint8_t *p = take(m, n);
    if (!p)
        return -1;
    *value = 0;
    for (size_t i = 0; i < n; i++)
        *value |= (uint64_t)p[i] << (8 * i);
    return 0;
}

/* A text line ending in '\n' (GLOBAL's module and name, PERSID). */
static const char *read_line(machine_t *m, size_t *len)
{
    const uint8_t *start = m->data + m->pos;
    const uint8_t *nl = memchr(start, '\n', m->size - m->pos);
    if (!nl) {
        fail(m, "truncated: unterminated text line");
        return NULL;
    }
    *len = (size_t)(nl - start);
    m->pos += *len + 1;
    return (const char *)start;
}

static void push(machine_t *m, pk_value_t *v)
{
    pk_reader_t *r = m->r;
    grow((void **)&r->stack, &r->cap_stack, r->n_stack + 1, sizeof(*r->stack));
    r->stack[r->n_stack++] = v;
}

static pk_value_t *pop(machine_t *m)
{
    pk_reader_t *r = m->r;
    size_t floor = r->n_marks ? r->marks[r->n_marks - 1] : 0;
    if (r->n_stack <= floor) {
        fail(m, "stack underflow");
        return NULL;
    }
    return r->stack[--r->n_stack];
}

static pk_value_t *top(machine_t *m)
{
    pk_reader_t *r = m->r;
    size_t floor = r->n_marks ? r->marks[r->n_marks - 1] : 0;
    if (r->n_stack <= floor) {
        fail(m, "stack underflow");
        return NULL;
    }
    return r->stack[r->n_stack - 1];
}

/* Pop everything down to the last MARK: its position in the stack, or -1. */
static long pop_mark(machine_t *m)
{
    pk_reader_t *r = m->r;
    if (!r->n_marks)
        return fail(m, "no MARK on the stack");
    size_t at = r->marks[--r->n_marks];
    r->n_stack = at;
    return (long)at;
}

/* A sized string or bytes value of n bytes read from the stream. */
static int push_data(machine_t *m, pk_kind_t kind, uint64_t n)
{
    if (n > m->size - m->pos)
        return fail(m, "declared length %llu but only %zu bytes left", (unsigned long long)n,
                    m->size - m->pos);
    pk_value_t *v = make(m->r, kind);
    v->s = (const char *)take(m, (size_t)n);
    v->len = (size_t)n;
    push(m, v);
    return 0;
}

/* A little-endian two's complement integer of n bytes (LONG1, LONG4). */
static int push_long(machine_t *m, uint64_t n)
{
    if (n > m->size - m->pos)
        return fail(m, "declared integer of %llu bytes but only %zu bytes left",
                    (unsigned long long)n, m->size - m->pos);
    const uint8_t *p = take(m, (size_t)n);
    if (n > 8) {
        pk_value_t *v = make(m->r, PK_BIGINT);
        v->s = (const char *)p;
        v->len = (size_t)n;
        push(m, v);
        return 0;
    }
    uint64_t u = 0;
    for (size_t i = 0; i < n; i++)
        u |= (uint64_t)p[i] << (8 * i);
    if (n > 0 && n < 8 && (p[n - 1] & 0x80))
        u |= ~(uint64_t)0 << (8 * n); /* sign extension */
    pk_value_t *v = make(m->r, PK_INT);
    memcpy(&v->i, &u, sizeof(u));
    push(m, v);
    return 0;
}

static int push_int(machine_t *m, int64_t i)
{
    pk_value_t *v = make(m->r, PK_INT);
    v->i = i;
    push(m, v);
    return 0;
}

/* Collect stack[from..] into a new container of kind. */
static pk_value_t *collect(machine_t *m, pk_kind_t kind, size_t from, size_t to)
{
    pk_value_t *v = make(m->r, kind);
    for (size_t i = from; i < to; i++)
        add_item(v, m->r->stack[i]);
    return v;
}

static int push_tuple_of(machine_t *m, size_t n)
{
    pk_reader_t *r = m->r;
    size_t floor = r->n_marks ? r->marks[r->n_marks - 1] : 0;
    if (r->n_stack < floor + n)
        return fail(m, "stack underflow");
    pk_value_t *t = collect(m, PK_TUPLE, r->n_stack - n, r->n_stack);
    r->n_stack -= n;
    push(m, t);
    return 0;
}

static int memo_put(machine_t *m, uint64_t index)
{
    pk_reader_t *r = m->r;
    /* A pickler numbers its memo entries in order, so an index beyond the opcodes run so far
     * is not from one: refusing it keeps the memo from being sized by the file. */
    if (index > r->ops || index >= OBJECTS_MAX)
        return fail(m, "memo index %llu out of range", (unsigned long long)index);
    pk_value_t *v = top(m);
    if (!v)
        return -1;
    if (index >= r->n_memo) {
        size_t n = (size_t)index + 1;
        r->memo = xrealloc(r->memo, n * sizeof(*r->memo));
        memset(r->memo + r->n_memo, 0, (n - r->n_memo) * sizeof(*r->memo));
        r->n_memo = n;
    }
    r->memo[index] = v;
    return 0;
}

static int memo_get(machine_t *m, uint64_t index)
{
    pk_reader_t *r = m->r;
    if (index >= r->n_memo || !r->memo[index])
        return fail(m, "memo entry %llu was never stored", (unsigned long long)index);
    push(m, r->memo[index]);
    return 0;
}

static int push_global(machine_t *m, const char *module, size_t mlen, const char *name,
                       size_t nlen)
{
    pk_value_t *v = make(m->r, PK_GLOBAL);
    v->module = arena_string(m->r, module, mlen);
    v->name = arena_string(m->r, name, nlen);
    push(m, v);
    return 0;
}

/* Calling a global: a few containers are made for real (their items follow), everything
 * else becomes an inert object. */
static int call(machine_t *m, pk_value_t *callable, pk_value_t *args)
{
    /* torch's older format replaces a module class by a persistent id ('module', class,
     * source file, source): the class inside is what is called. */
    if (callable->kind == PK_PERSID && callable->args->kind == PK_TUPLE &&
        callable->args->n >= 2 && pk_is_str(callable->args->items[0], "module") &&
        callable->args->items[1]->kind == PK_GLOBAL)
        callable = callable->args->items[1];
    if (callable->kind != PK_GLOBAL)
        return fail(m, "call of a %s, not of a class or function", pk_kind_name(callable->kind));
    if (args->kind != PK_TUPLE)
        return fail(m, "call of %s.%s with %s arguments", callable->module, callable->name,
                    pk_kind_name(args->kind));
    pk_value_t *v;
    if (pk_is_global(callable, "collections", "OrderedDict") ||
        pk_is_global(callable, "builtins", "dict") ||
        pk_is_global(callable, "__builtin__", "dict")) {
        v = make(m->r, PK_DICT);
        if (args->n > 0) {
            /* OrderedDict([(k, v), ...]): the pairs. */
            pk_value_t *pairs = args->items[0];
            if (pairs->kind != PK_LIST && pairs->kind != PK_TUPLE)
                return fail(m, "%s of a %s", callable->name, pk_kind_name(pairs->kind));
            for (size_t i = 0; i < pairs->n; i++) {
                pk_value_t *pair = pairs->items[i];
                if ((pair->kind != PK_TUPLE && pair->kind != PK_LIST) || pair->n != 2)
                    return fail(m, "%s item %zu is not a pair", callable->name, i);
                add_item(v, pair->items[0]);
                add_item(v, pair->items[1]);
            }
        }
    } else {
        v = make(m->r, PK_OBJECT);
        v->callable = callable;
        v->args = args;
    }
    push(m, v);
    return 0;
}

static int set_items(machine_t *m, pk_value_t *target, size_t from, size_t to)
{
    if (target->kind == PK_OBJECT) {
        if (!target->dict)
            target->dict = make(m->r, PK_DICT);
        target = target->dict;
    }
    if (target->kind != PK_DICT)
        return fail(m, "setting items on a %s", pk_kind_name(target->kind));
    if ((to - from) % 2)
        return fail(m, "odd number of values for dict items");
    /* A repeated key replaces the earlier value, as in Python. The search is linear, so it
     * stops at DICT_DEDUP_MAX entries (no real state_dict comes near): a repeated key in a
     * larger dict stays twice, and two tensors of one name are refused later. */
    for (size_t i = from; i < to; i += 2) {
        pk_value_t *key = m->r->stack[i], *value = m->r->stack[i + 1];
        int replaced = 0;
        if (key->kind == PK_STR && target->n < 2 * DICT_DEDUP_MAX) {
            for (size_t k = 0; k < target->n && !replaced; k += 2) {
                pk_value_t *old = target->items[k];
                if (old->kind == PK_STR && old->len == key->len &&
                    memcmp(old->s, key->s, key->len) == 0) {
                    target->items[k + 1] = value;
                    replaced = 1;
                }
            }
        }
        if (!replaced) {
            add_item(target, key);
            add_item(target, value);
        }
    }
    return 0;
}

static int append_items(machine_t *m, pk_value_t *target, size_t from, size_t to)
{
    if (target->kind == PK_OBJECT) {
        if (!target->list)
            target->list = make(m->r, PK_LIST);
        target = target->list;
    }
    if (target->kind != PK_LIST && target->kind != PK_SET)
        return fail(m, "appending to a %s", pk_kind_name(target->kind));
    for (size_t i = from; i < to; i++)
        add_item(target, m->r->stack[i]);
    return 0;
}

/* BUILD: state for an object. On a dict (OrderedDict's own attributes such as torch's
 * _metadata) it is not an item and is ignored. */
static int build(machine_t *m)
{
    pk_value_t *state = pop(m);
    pk_value_t *obj = state ? top(m) : NULL;
    if (!obj)
        return -1;
    if (obj->kind == PK_OBJECT)
        obj->state = state;
    else if (obj->kind != PK_DICT && obj->kind != PK_LIST && obj->kind != PK_SET)
        return fail(m, "BUILD on a %s", pk_kind_name(obj->kind));
    return 0;
}

static int step(machine_t *m, int opcode)
{
    pk_reader_t *r = m->r;
    uint64_t n;
    pk_value_t *a, *b, *v;
    const uint8_t *p;
    long at;

    switch (opcode) {
    case 0x80: /* PROTO */
        if (!(p = take(m, 1)))
            return -1;
        if (*p > 5)
            return fail(m, "pickle protocol %d (this reader knows 2 to 5)", *p);
        return 0;
    case 0x95: /* FRAME: a length hint only */
        return read_uint(m, 8, &n);
    case '(': /* MARK */
        if (r->n_marks >= MARK_DEPTH_MAX)
            return fail(m, "MARKs nested deeper than %d", MARK_DEPTH_MAX);
        grow((void **)&r->marks, &r->cap_marks, r->n_marks + 1, sizeof(*r->marks));
        r->marks[r->n_marks++] = r->n_stack;
        return 0;
    case '0': /* POP */
        return pop(m) ? 0 : -1;
    case '1': /* POP_MARK */
        return pop_mark(m) < 0 ? -1 : 0;
    case '2': /* DUP */
        if (!(v = top(m)))
            return -1;
        push(m, v);
        return 0;
    case 'N':
        push(m, make(r, PK_NONE));
        return 0;
    case 0x88: /* NEWTRUE */
    case 0x89: /* NEWFALSE */
        v = make(r, PK_BOOL);
        v->i = opcode == 0x88;
        push(m, v);
        return 0;
    case 'J': /* BININT */
        if (read_uint(m, 4, &n) < 0)
            return -1;
        return push_int(m, (int32_t)(uint32_t)n);
    case 'K': /* BININT1 */
        if (read_uint(m, 1, &n) < 0)
            return -1;
        return push_int(m, (int64_t)n);
    case 'M': /* BININT2 */
        if (read_uint(m, 2, &n) < 0)
            return -1;
        return push_int(m, (int64_t)n);
    case 0x8a: /* LONG1 */
        if (read_uint(m, 1, &n) < 0)
            return -1;
        return push_long(m, n);
    case 0x8b: /* LONG4 */
        if (read_uint(m, 4, &n) < 0)
            return -1;
        return push_long(m, n);
    case 'G': { /* BINFLOAT, big-endian */
        if (!(p = take(m, 8)))
            return -1;
        uint64_t bits = 0;
        for (int i = 0; i < 8; i++)
            bits = bits << 8 | p[i];
        v = make(r, PK_FLOAT);
        memcpy(&v->f, &bits, sizeof(bits));
        push(m, v);
        return 0;
    }
    case 'T': /* BINSTRING (Python 2 str) */
    case 'X': /* BINUNICODE */
    case 'B': /* BINBYTES */
        if (read_uint(m, 4, &n) < 0)
            return -1;
        return push_data(m, opcode == 'B' ? PK_BYTES : PK_STR, n);
    case 'U':  /* SHORT_BINSTRING */
    case 0x8c: /* SHORT_BINUNICODE */
    case 'C':  /* SHORT_BINBYTES */
        if (read_uint(m, 1, &n) < 0)
            return -1;
        return push_data(m, opcode == 'C' ? PK_BYTES : PK_STR, n);
    case 0x8d: /* BINUNICODE8 */
    case 0x8e: /* BINBYTES8 */
    case 0x96: /* BYTEARRAY8 */
        if (read_uint(m, 8, &n) < 0)
            return -1;
        return push_data(m, opcode == 0x8d ? PK_STR : PK_BYTES, n);
    case ')': /* EMPTY_TUPLE */
        push(m, make(r, PK_TUPLE));
        return 0;
    case 0x85: /* TUPLE1 */
    case 0x86: /* TUPLE2 */
    case 0x87: /* TUPLE3 */
        return push_tuple_of(m, (size_t)(opcode - 0x84));
    case 't':  /* TUPLE */
    case 'l':  /* LIST */
    case 0x91: /* FROZENSET */
        if (!r->n_marks)
            return fail(m, "no MARK on the stack");
        at = (long)r->marks[r->n_marks - 1];
        v = collect(m, opcode == 't' ? PK_TUPLE : opcode == 'l' ? PK_LIST : PK_SET,
                    (size_t)at, r->n_stack);
        pop_mark(m);
        push(m, v);
        return 0;
    case ']': /* EMPTY_LIST */
        push(m, make(r, PK_LIST));
        return 0;
    case '}': /* EMPTY_DICT */
        push(m, make(r, PK_DICT));
        return 0;
    case 0x8f: /* EMPTY_SET */
        push(m, make(r, PK_SET));
        return 0;
    case 'd': /* DICT */
        if (!r->n_marks)
            return fail(m, "no MARK on the stack");
        at = (long)r->marks[r->n_marks - 1];
        v = make(r, PK_DICT);
        if (set_items(m, v, (size_t)at, r->n_stack) < 0)
            return -1;
        pop_mark(m);
        push(m, v);
        return 0;
    case 'a': /* APPEND */
        if (!(b = pop(m)) || !(a = top(m)))
            return -1;
        /* b is still in the array, just above the top */
        return append_items(m, a, r->n_stack, r->n_stack + 1);
    case 's': /* SETITEM */
        if (!(b = pop(m)) || !(a = pop(m)) || !(v = top(m)))
            return -1;
        /* key and value are still in the array just above the top, in order */
        return set_items(m, v, r->n_stack, r->n_stack + 2);
    case 'e':  /* APPENDS */
    case 'u':  /* SETITEMS */
    case 0x90: /* ADDITEMS */ {
        size_t end = r->n_stack;
        if ((at = pop_mark(m)) < 0 || !(v = top(m)))
            return -1;
        /* the items popped are still in the array just above the top */
        return opcode == 'u' ? set_items(m, v, (size_t)at, end)
                             : append_items(m, v, (size_t)at, end);
    }
    default:
        break;
    }
    return 1; /* not handled here */
}

/* The opcodes that name, call and remember objects. */
static int step_objects(machine_t *m, int opcode)
{
    pk_reader_t *r = m->r;
    uint64_t n;
    size_t len, len2;
    pk_value_t *a, *b, *c;

    switch (opcode) {
    case 'c': { /* GLOBAL: module and name as text lines */
        const char *module = read_line(m, &len), *name = module ? read_line(m, &len2) : NULL;
        if (!name)
            return -1;
        return push_global(m, module, len, name, len2);
    }
    case 0x93: /* STACK_GLOBAL */
        if (!(b = pop(m)) || !(a = pop(m)))
            return -1;
        if (a->kind != PK_STR || b->kind != PK_STR)
            return fail(m, "STACK_GLOBAL of a %s and a %s", pk_kind_name(a->kind),
                        pk_kind_name(b->kind));
        return push_global(m, a->s, a->len, b->s, b->len);
    case 'R':  /* REDUCE: callable(*args) */
    case 0x81: /* NEWOBJ: cls.__new__(cls, *args) */
        if (!(b = pop(m)) || !(a = pop(m)))
            return -1;
        return call(m, a, b);
    case 0x92: /* NEWOBJ_EX: cls, args, kwargs (kwargs ignored) */
        if (!(c = pop(m)) || !(b = pop(m)) || !(a = pop(m)))
            return -1;
        return call(m, a, b);
    case 'b': /* BUILD */
        return build(m);
    case 'p': { /* PUT: decimal index as text */
        const char *line = read_line(m, &len);
        if (!line)
            return -1;
        char digits[24];
        if (len == 0 || len >= sizeof(digits))
            return fail(m, "bad PUT index");
        memcpy(digits, line, len);
        digits[len] = 0;
        char *end;
        unsigned long long index = strtoull(digits, &end, 10);
        if (*end)
            return fail(m, "bad PUT index");
        return memo_put(m, index);
    }
    case 'q': /* BINPUT */
        return read_uint(m, 1, &n) < 0 ? -1 : memo_put(m, n);
    case 'r': /* LONG_BINPUT */
        return read_uint(m, 4, &n) < 0 ? -1 : memo_put(m, n);
    case 0x94: /* MEMOIZE */
        return memo_put(m, r->n_memo);
    case 'h': /* BINGET */
        return read_uint(m, 1, &n) < 0 ? -1 : memo_get(m, n);
    case 'j': /* LONG_BINGET */
        return read_uint(m, 4, &n) < 0 ? -1 : memo_get(m, n);
    case 'Q': /* BINPERSID */
        if (!(a = pop(m)))
            return -1;
        b = make(r, PK_PERSID);
        b->args = a;
        push(m, b);
        return 0;
    case 'P': { /* PERSID: the id as a text line */
        const char *line = read_line(m, &len);
        if (!line)
            return -1;
        a = make(r, PK_STR);
        a->s = line;
        a->len = len;
        b = make(r, PK_PERSID);
        b->args = a;
        push(m, b);
        return 0;
    }
    default:
        break;
    }
    return 1;
}

pk_value_t *pk_load(pk_reader_t *r, const uint8_t *data, size_t size, size_t *pos)
{
    machine_t m = {r, data, size, *pos, *pos};
    r->n_stack = r->n_marks = r->n_memo = 0;
    r->error[0] = 0;
    for (;;) {
        m.op_pos = m.pos;
        if (m.pos >= m.size) {
            fail(&m, "truncated: the stream ends before its STOP opcode");
            return NULL;
        }
        int opcode = m.data[m.pos++];
        r->ops++;
        if (opcode == '.') { /* STOP */
            pk_value_t *v = pop(&m);
            if (!v)
                return NULL;
            *pos = m.pos;
            return v;
        }
        int rc = step(&m, opcode);
        if (rc > 0)
            rc = step_objects(&m, opcode);
        if (rc > 0) {
            if (opcode >= 0x20 && opcode < 0x7f)
                fail(&m, "unknown or unsupported opcode 0x%02x ('%c')", opcode, opcode);
            else
                fail(&m, "unknown or unsupported opcode 0x%02x", opcode);
            return NULL;
        }
        if (rc < 0)
            return NULL;
        if (r->n_values > OBJECTS_MAX || r->n_stack > OBJECTS_MAX) {
            fail(&m, "more than %u objects or stack entries", OBJECTS_MAX);
            return NULL;
        }
    }
}

/* ---- helpers ------------------------------------------------------------------------------- */

int pk_is_str(const pk_value_t *v, const char *s)
{
    size_t len = strlen(s);
    return v && v->kind == PK_STR && v->len == len && memcmp(v->s, s, len) == 0;
}

int pk_is_global(const pk_value_t *v, const char *module, const char *name)
{
    return v && v->kind == PK_GLOBAL && strcmp(v->module, module) == 0 &&
           strcmp(v->name, name) == 0;
}

pk_value_t *pk_dict_get(const pk_value_t *dict, const char *key)
{
    if (!dict || dict->kind != PK_DICT)
        return NULL;
    for (size_t i = 0; i + 1 < dict->n; i += 2)
        if (pk_is_str(dict->items[i], key))
            return dict->items[i + 1];
    return NULL;
}

const char *pk_cstr(pk_reader_t *r, const pk_value_t *v)
{
    if (!v || (v->kind != PK_STR && v->kind != PK_BYTES))
        return NULL;
    return arena_string(r, v->s, v->len);
}

const char *pk_kind_name(pk_kind_t kind)
{
    static const char *names[] = {"None",  "bool",  "int",    "big int", "float",
                                  "str",   "bytes", "tuple",  "list",    "set",
                                  "dict",  "global", "object", "persistent id"};
    return (size_t)kind < sizeof(names) / sizeof(names[0]) ? names[kind] : "?";
}

pk_value_t *const *pk_values(const pk_reader_t *r, size_t *n)
{
    *n = r->n_values;
    return r->values;
}
