#include "slot_table.h"

#include <stdlib.h>
#include <string.h>

void slot_table_init(slot_table *t) { memset(t, 0, sizeof(*t)); }

void slot_table_fini(slot_table *t) {
    free(t->slots);
    memset(t, 0, sizeof(*t));
}

uint64_t slot_table_insert(slot_table *t, void *ptr) {
    uint32_t idx;
    if (t->free_head) {
        idx = t->free_head - 1;
        t->free_head = t->slots[idx].next_free;
    } else {
        if (t->count == UINT32_MAX - 1) return 0;
        if (t->count == t->capacity) {
            uint32_t cap = t->capacity ? t->capacity : 64;
            cap = cap > UINT32_MAX / 2 ? UINT32_MAX - 1 : cap * 2;
            slot_entry *s = realloc(t->slots, (size_t)cap * sizeof(*s));
            if (!s) return 0;
            t->slots = s;
            t->capacity = cap;
        }
        idx = t->count++;
        t->slots[idx].gen = 1;
    }
    t->slots[idx].ptr = ptr;
    t->slots[idx].next_free = 0;
    t->live++;
    return ((uint64_t)t->slots[idx].gen << 32) | (uint64_t)(idx + 1);
}

void slot_table_remove(slot_table *t, uint64_t id) {
    if (!slot_table_get(t, id)) return;
    uint32_t idx = (uint32_t)(id & 0xffffffffu) - 1;
    slot_entry *e = &t->slots[idx];
    e->ptr = NULL;
    e->gen = e->gen == UINT32_MAX ? 1 : e->gen + 1;
    e->next_free = t->free_head;
    t->free_head = idx + 1;
    t->live--;
}
