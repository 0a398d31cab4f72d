/*
 * Generation-checked handle table: maps 64-bit ids (generation << 32 | index + 1) to pointers in
 * O(1), so a stale or forged id is detected instead of dereferenced. Not thread-safe.
 */
#ifndef VC_SLOT_TABLE_H
#define VC_SLOT_TABLE_H

#include <stddef.h>
#include <stdint.h>

typedef struct slot_entry {
    void *ptr;    /* NULL when the slot is free */
    uint32_t gen; /* bumped when the slot is freed */
    uint32_t next_free;
} slot_entry;

typedef struct slot_table {
    slot_entry *slots;
    uint32_t count;     /* slots ever used */
    uint32_t capacity;
    uint32_t free_head; /* index + 1 of the first free slot, 0 if none */
    uint32_t live;
} slot_table;

void slot_table_init(slot_table *t);
void slot_table_fini(slot_table *t);
/** Stores ptr and returns its id, or 0 when out of memory or out of indices. */
uint64_t slot_table_insert(slot_table *t, void *ptr);
/** Removes the entry for id; the id becomes stale. No-op for an invalid id. */
void slot_table_remove(slot_table *t, uint64_t id);

static inline void *slot_table_get(const slot_table *t, uint64_t id) {
    uint32_t idx = (uint32_t)(id & 0xffffffffu);
    if (idx == 0 || idx > t->count) return NULL;
    const slot_entry *e = &t->slots[idx - 1];
    return e->gen == (uint32_t)(id >> 32) ? e->ptr : NULL;
}

#endif /* VC_SLOT_TABLE_H */
