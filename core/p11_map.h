/* Token objects to keys, without a token: the attribute template one
 * C_GetAttributeValue fills per object, the checks on the lengths the token
 * reported, and the pairing and mapping rules of DESIGN.md ("Behaviour to
 * match"). p11_keys.c feeds it from a token; spec/fuzz/fuzz_p11_map.c feeds it
 * arbitrary values and lengths. */
#ifndef JWKE_P11_MAP_H
#define JWKE_P11_MAP_H

#include <stddef.h>

#include "error.h"
#include "p11_keys.h"

typedef struct jwke_p11_objects jwke_p11_objects;

jwke_p11_objects *jwke_p11_objects_new(size_t count, jwke_error *err);
void jwke_p11_objects_free(jwke_p11_objects *objects);

/* The template for object i (its buffers inside `objects`) to hand to
 * C_GetAttributeValue as it is; *count is its length. */
CK_ATTRIBUTE *jwke_p11_object_template(jwke_p11_objects *objects, size_t i,
                                       CK_OBJECT_HANDLE handle, CK_ULONG *count);

/* Judges what C_GetAttributeValue (which answered rv) left in object i's
 * template. Every reported length is checked against the buffer it was
 * given whatever rv says: CKR_OK when the object is usable, rv for a
 * failed call, or JWKE_OP_FAILED with err naming the attribute (code
 * JWKE_ERR_TOKEN_LENGTH for a length the token should not have reported). */
CK_RV jwke_p11_object_check(jwke_p11_objects *objects, size_t i, CK_RV rv, jwke_error *err);

/* Pairs the checked objects by CKA_ID and maps each pair to a key (objects
 * that are neither private nor public keys are skipped). A half without
 * its partner, a duplicate CKA_ID, an unsupported key type or an RSA key
 * under min_rsa_bits fails the whole set with a message naming the kid.
 * Free the keys with jwke_p11_keys_free. */
int jwke_p11_map_objects(jwke_p11_objects *objects, int min_rsa_bits, jwke_p11_key **keys,
                         size_t *count, jwke_error *err);

/* A kid for messages: as-is when printable, else 0x and hex, cut to fit
 * buf (2 * JWKE_MAX_ID_LEN + 3 bytes hold any). */
const char *jwke_p11_printable_kid(const unsigned char *id, size_t len, char *buf, size_t size);

void jwke_p11_key_clear(jwke_p11_key *key);
void jwke_p11_keys_free(jwke_p11_key *keys, size_t count);

#endif
