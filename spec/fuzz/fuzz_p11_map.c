/* The token-object-to-key mapping (core/p11_map.c) fed what a misbehaving
 * token could leave in the engine's templates: each attribute gets at most
 * its buffer's bytes (a token cannot write more than it was given without
 * corrupting memory on its own) but any reported length, and each call any
 * return code. The checks must refuse every length a buffer cannot back;
 * what passes is paired and mapped, and each key that maps must export its
 * public members.
 *
 * Input: an object count byte; per object a return-code byte, then per
 * template attribute a mode byte (0: the length written, 1: unavailable,
 * 2: the next 8 bytes, as a token reports it), then a length-prefixed value
 * (fuzz_input.h). Attribute values are in host byte order, as on a token. */
#include <string.h>

#include <openssl/err.h>

#include "fuzz_input.h"
#include "p11_key_struct.h"
#include "p11_map.h"
#include "pkey.h"

#define MAX_OBJECTS 4

static const CK_RV return_codes[] = {CKR_OK, CKR_ATTRIBUTE_TYPE_INVALID, CKR_ATTRIBUTE_SENSITIVE,
                                     CKR_BUFFER_TOO_SMALL, CKR_GENERAL_ERROR};

static CK_ULONG reported_length(fuzz_input *in, uint8_t mode, size_t written)
{
    switch (mode % 3) {
    case 0: return (CK_ULONG)written;
    case 1: return CK_UNAVAILABLE_INFORMATION;
    default: {
        CK_ULONG n = 0;
        for (int i = 0; i < 8; i++)
            n = n << 8 | fuzz_byte(in);
        return n;
    }
    }
}

/* What a token does with one object's template; returns its CKR. */
static CK_RV fill(fuzz_input *in, CK_ATTRIBUTE *template, CK_ULONG count, CK_ULONG *given)
{
    CK_RV rv = return_codes[fuzz_byte(in) % (sizeof return_codes / sizeof return_codes[0])];
    for (CK_ULONG a = 0; a < count; a++) {
        given[a] = template[a].ulValueLen;
        uint8_t mode = fuzz_byte(in);
        size_t written;
        const uint8_t *value = fuzz_field(in, given[a], &written);
        memcpy(template[a].pValue, value, written);
        template[a].ulValueLen = reported_length(in, mode, written);
    }
    return rv;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_input in = {data, size};
    size_t n = fuzz_byte(&in) % (MAX_OBJECTS + 1);
    jwke_error err;
    jwke_p11_objects *objects = jwke_p11_objects_new(n, &err);
    FUZZ_ASSERT(objects);
    int usable = 1;
    for (size_t i = 0; i < n && usable; i++) {
        CK_ULONG count;
        CK_ATTRIBUTE *template = jwke_p11_object_template(objects, i, (CK_OBJECT_HANDLE)i + 1,
                                                          &count);
        CK_ULONG given[16];
        FUZZ_ASSERT(count <= sizeof given / sizeof given[0]);
        CK_RV rv = fill(&in, template, count, given);
        usable = jwke_p11_object_check(objects, i, rv, &err) == CKR_OK;
        /* what the check lets through, the buffers hold */
        for (CK_ULONG a = 0; a < count && usable; a++)
            FUZZ_ASSERT(template[a].ulValueLen == CK_UNAVAILABLE_INFORMATION ||
                        template[a].ulValueLen <= given[a]);
    }
    if (usable) {
        jwke_p11_key *keys = NULL;
        size_t key_count = 0;
        if (jwke_p11_map_objects(objects, 0, &keys, &key_count, &err) == 0) {
            for (size_t k = 0; k < key_count; k++) {
                FUZZ_ASSERT(keys[k].public_key && keys[k].alg && keys[k].id_len <= JWKE_MAX_ID_LEN);
                jwke_public_members members;
                FUZZ_ASSERT(jwke_pkey_public_members(keys[k].public_key, &members, &err) == 0);
                jwke_public_members_clear(&members);
            }
            jwke_p11_keys_free(keys, key_count);
        }
    }
    jwke_p11_objects_free(objects);
    ERR_clear_error();
    return 0;
}
