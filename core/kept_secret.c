#include "kept_secret.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <openssl/crypto.h>

/* A PIN, and the store's secrets one by one (64 at most, as the store
 * takes), with room to spare. */
#define KEPT_SLOTS 72

typedef struct kept_slot {
    char name[64];
    unsigned char *data; /* cap bytes, locked; NULL when the slot is free */
    size_t cap, len;
} kept_slot;

static kept_slot slots[KEPT_SLOTS];
static pthread_mutex_t kept_lock = PTHREAD_MUTEX_INITIALIZER;

static kept_slot *find(const char *name)
{
    for (size_t i = 0; i < KEPT_SLOTS; i++)
        if (slots[i].data && strcmp(slots[i].name, name) == 0)
            return &slots[i];
    return NULL;
}

static void release(kept_slot *slot)
{
    OPENSSL_cleanse(slot->data, slot->cap);
    munlock(slot->data, slot->cap);
    free(slot->data);
    memset(slot, 0, sizeof *slot);
}

int jwke_kept_fill(const char *name, size_t cap, jwke_pin_fill fill, const void *ctx,
                   jwke_error *err)
{
    if (strlen(name) >= sizeof slots[0].name)
        return jwke_fail_code(err, JWKE_ERR_INVALID_ARGUMENT, "a kept secret's name is too long");
    unsigned char *data = calloc(1, cap);
    if (!data)
        return jwke_fail(err, "out of memory keeping a secret");
    mlock(data, cap); /* best effort, as for the token's copy of the PIN */
    madvise(data, cap, MADV_DONTDUMP);
    size_t len = 0;
    if (fill(ctx, data, cap, &len, err) != 0 || len >= cap) {
        OPENSSL_cleanse(data, cap);
        munlock(data, cap);
        free(data);
        return len >= cap ? jwke_fail(err, "a kept secret overflowed its buffer") : -1;
    }
    pthread_mutex_lock(&kept_lock);
    kept_slot *slot = find(name);
    if (slot)
        release(slot);
    for (size_t i = 0; !slot && i < KEPT_SLOTS; i++)
        if (!slots[i].data)
            slot = &slots[i];
    if (slot) {
        snprintf(slot->name, sizeof slot->name, "%s", name);
        slot->data = data;
        slot->cap = cap;
        slot->len = len;
    }
    pthread_mutex_unlock(&kept_lock);
    if (!slot) {
        OPENSSL_cleanse(data, cap);
        munlock(data, cap);
        free(data);
        return jwke_fail(err, "too many kept secrets (at most %d)", KEPT_SLOTS);
    }
    return 0;
}

int jwke_kept_copy(const void *name, unsigned char *buf, size_t cap, size_t *len,
                   jwke_error *err)
{
    int rc;
    pthread_mutex_lock(&kept_lock);
    kept_slot *slot = find(name);
    if (!slot) {
        rc = jwke_fail_code(err, JWKE_ERR_CONFIG, "%s is not set", (const char *)name);
    } else if (slot->len >= cap) {
        rc = jwke_fail_code(err, JWKE_ERR_CONFIG, "%s: the secret must be 1 to %zu bytes long",
                            (const char *)name, cap - 1);
    } else {
        memcpy(buf, slot->data, slot->len);
        *len = slot->len;
        rc = 0;
    }
    pthread_mutex_unlock(&kept_lock);
    return rc;
}

size_t jwke_kept_len(const char *name)
{
    pthread_mutex_lock(&kept_lock);
    kept_slot *slot = find(name);
    size_t len = slot ? slot->len : 0;
    pthread_mutex_unlock(&kept_lock);
    return len;
}

int jwke_kept_forget(const char *name)
{
    pthread_mutex_lock(&kept_lock);
    kept_slot *slot = find(name);
    if (slot)
        release(slot);
    pthread_mutex_unlock(&kept_lock);
    return slot != NULL;
}
