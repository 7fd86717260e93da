/* Data objects on a token (CKO_DATA): where jwkengine keeps what belongs
 * next to the keys but is not a key, such as a set's key states. An
 * object is known by its CKA_APPLICATION and CKA_LABEL; its CKA_VALUE is
 * the payload. Objects are created token and private (readable only after
 * login), never modified in place: a writer creates a new object and
 * destroys old ones, which is all tokens agree on. */
#ifndef JWKE_P11_DATA_H
#define JWKE_P11_DATA_H

#include <stddef.h>

#include "error.h"
#include "p11_token.h"

/* The largest CKA_VALUE read or written: a state object of a set with
 * hundreds of keys fits; a token reporting more is refused by name. */
#define JWKE_DATA_VALUE_MAX (64 * 1024)
/* The largest CKA_LABEL read back (a key set's prefixed name). */
#define JWKE_DATA_LABEL_MAX 512

typedef struct jwke_p11_data {
    char *label;            /* CKA_LABEL, NUL-terminated */
    size_t label_len;
    unsigned char *value;   /* CKA_VALUE */
    size_t value_len;
} jwke_p11_data;

/* Every data object of `application` (and labelled `label`, when label is
 * not NULL), with its label and value. An object destroyed by another
 * process between the search and the read is left out. One that cannot be
 * read (a value over JWKE_DATA_VALUE_MAX, a length no buffer holds,
 * CKR_ATTRIBUTE_SENSITIVE, ...) does not fail the others: it is left out
 * of `found` and its reason goes to *unreadable (malloc'd, *unreadable_count
 * entries, NULL when none; free with free()), so one oversized object
 * another process wrote beside a set's records cannot hide them. A failed
 * search or session fails the whole call. Free `found` with
 * jwke_p11_data_free. */
int jwke_p11_data_find(jwke_p11_token *token, const char *application, const char *label,
                       size_t label_len, jwke_p11_data **found, size_t *count,
                       jwke_error **unreadable, size_t *unreadable_count, jwke_error *err);

/* Creates one data object (CKA_TOKEN, CKA_PRIVATE true). */
int jwke_p11_data_create(jwke_p11_token *token, const char *application, const char *label,
                         size_t label_len, const unsigned char *value, size_t value_len,
                         jwke_error *err);

/* Destroys the data objects of `application` labelled `label` whose value
 * is exactly `value`; *destroyed is how many went. */
int jwke_p11_data_destroy(jwke_p11_token *token, const char *application, const char *label,
                          size_t label_len, const unsigned char *value, size_t value_len,
                          size_t *destroyed, jwke_error *err);

void jwke_p11_data_free(jwke_p11_data *objects, size_t count);

#endif
