/* Secrets kept in C for the life of the process, by name, in locked memory
 * kept out of core dumps. A pre-forking host (nginx) keeps in its master
 * what its workers need, so no Lua table carries a PIN or a store secret
 * across the fork; a child inherits the values (not the mlock: Linux does
 * not carry locks over fork, MADV_DONTDUMP it does). */
#ifndef JWKE_KEPT_SECRET_H
#define JWKE_KEPT_SECRET_H

#include <stddef.h>

#include "error.h"
#include "pin_source.h"

/* Stores what fill writes (at most cap - 1 bytes; ctx is fill's) under
 * name, replacing and wiping a previous value. 0 or -1 with err. */
int jwke_kept_fill(const char *name, size_t cap, jwke_pin_fill fill, const void *ctx,
                   jwke_error *err);

/* A jwke_pin_fill (ctx: the name): copies the value kept under that name
 * into buf, which must hold it with one byte to spare. */
jwke_pin_filler jwke_kept_copy;

/* The length of the value kept under name; 0 when there is none. */
size_t jwke_kept_len(const char *name);

/* Wipes and drops the value kept under name; 1 if there was one. */
int jwke_kept_forget(const char *name);

#endif
