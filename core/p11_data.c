/* Data objects on a token (see p11_data.h). */
#include "p11_data.h"

#include <stdlib.h>
#include <string.h>

#include "p11_keys.h"
#include "p11_module.h"

void jwke_p11_data_free(jwke_p11_data *objects, size_t count)
{
    if (!objects)
        return;
    for (size_t i = 0; i < count; i++) {
        free(objects[i].label);
        free(objects[i].value);
    }
    free(objects);
}

typedef struct data_search {
    const char *application;
    const char *label; /* NULL: any */
    size_t label_len;
} data_search;

/* The objects a search names, found on `session`. */
static CK_RV find_data(jwke_p11_token *token, CK_SESSION_HANDLE session, const data_search *s,
                       CK_OBJECT_HANDLE **handles, size_t *count, const char **function,
                       jwke_error *err)
{
    CK_OBJECT_CLASS data_class = CKO_DATA;
    CK_ATTRIBUTE search[] = {
        {CKA_CLASS, &data_class, sizeof data_class},
        {CKA_APPLICATION, (void *)s->application, (CK_ULONG)strlen(s->application)},
        {CKA_LABEL, (void *)s->label, (CK_ULONG)s->label_len},
    };
    return jwke_p11_find(token, session, search, s->label ? 3 : 2, handles, count, function, err);
}

/* Reads one object's label and value into the caller's buffers (label:
 * JWKE_DATA_LABEL_MAX, value: JWKE_DATA_VALUE_MAX). Every reported length
 * is checked against its buffer whatever rv says: a token may report the
 * real size along with CKR_BUFFER_TOO_SMALL, or a wrong one with CKR_OK. */
static CK_RV read_data(jwke_p11_token *token, CK_SESSION_HANDLE session, CK_OBJECT_HANDLE handle,
                       char *label, size_t *label_len, unsigned char *value, size_t *value_len,
                       jwke_error *err)
{
    CK_ATTRIBUTE template[] = {
        {CKA_LABEL, label, JWKE_DATA_LABEL_MAX},
        {CKA_VALUE, value, JWKE_DATA_VALUE_MAX},
    };
    static const char *const names[] = {"CKA_LABEL", "CKA_VALUE"};
    CK_RV rv = jwke_p11_token_functions(token)->C_GetAttributeValue(session, handle, template, 2);
    if (rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL)
        return rv;
    for (int a = 0; a < 2; a++) {
        CK_ULONG buffer = a == 0 ? JWKE_DATA_LABEL_MAX : JWKE_DATA_VALUE_MAX;
        if (template[a].ulValueLen == CK_UNAVAILABLE_INFORMATION || template[a].ulValueLen > buffer) {
            jwke_fail_code(err, JWKE_ERR_TOKEN_LENGTH,
                           "C_GetAttributeValue: a data object's %s is larger than %lu bytes "
                           "(or unreadable)", names[a], (unsigned long)buffer);
            return JWKE_OP_FAILED;
        }
    }
    if (rv != CKR_OK)
        return rv;
    *label_len = template[0].ulValueLen;
    *value_len = template[1].ulValueLen;
    return CKR_OK;
}

typedef struct find_context {
    data_search search;
    jwke_p11_data *found;
    size_t count;
} find_context;

static CK_RV find_op(jwke_p11_token *token, CK_SESSION_HANDLE session, void *ctx,
                     const char **function, jwke_error *err)
{
    find_context *c = ctx;
    jwke_p11_data_free(c->found, c->count); /* from a failed first attempt */
    c->found = NULL;
    c->count = 0;
    CK_OBJECT_HANDLE *handles = NULL;
    size_t n = 0;
    CK_RV rv = find_data(token, session, &c->search, &handles, &n, function, err);
    if (rv != CKR_OK)
        return rv;
    char label[JWKE_DATA_LABEL_MAX];
    unsigned char *value = malloc(JWKE_DATA_VALUE_MAX);
    c->found = calloc(n + 1, sizeof *c->found);
    if (!value || !c->found) {
        free(value);
        free(handles);
        jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory reading data objects");
        return JWKE_OP_FAILED;
    }
    *function = "C_GetAttributeValue";
    for (size_t i = 0; i < n && rv == CKR_OK; i++) {
        size_t label_len, value_len;
        rv = read_data(token, session, handles[i], label, &label_len, value, &value_len, err);
        if (rv == CKR_OBJECT_HANDLE_INVALID) {
            rv = CKR_OK; /* destroyed since the search: a writer superseded it */
            continue;
        }
        if (rv != CKR_OK)
            break;
        jwke_p11_data *d = &c->found[c->count];
        d->label = malloc(label_len + 1);
        d->value = malloc(value_len ? value_len : 1);
        if (!d->label || !d->value) {
            free(d->label);
            free(d->value);
            d->label = NULL;
            d->value = NULL;
            jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory reading data objects");
            rv = JWKE_OP_FAILED;
            break;
        }
        memcpy(d->label, label, label_len);
        d->label[label_len] = '\0';
        d->label_len = label_len;
        memcpy(d->value, value, value_len);
        d->value_len = value_len;
        c->count++;
    }
    free(value);
    free(handles);
    return rv;
}

int jwke_p11_data_find(jwke_p11_token *token, const char *application, const char *label,
                       size_t label_len, jwke_p11_data **found, size_t *count, jwke_error *err)
{
    find_context c = {{application, label, label_len}, NULL, 0};
    if (jwke_p11_run(token, find_op, &c, err) != 0) {
        jwke_p11_data_free(c.found, c.count);
        return -1;
    }
    *found = c.found;
    *count = c.count;
    return 0;
}

typedef struct create_context {
    CK_ATTRIBUTE *template;
    CK_ULONG count;
} create_context;

static CK_RV create_op(jwke_p11_token *token, CK_SESSION_HANDLE session, void *ctx,
                       const char **function, jwke_error *err)
{
    (void)err;
    create_context *c = ctx;
    CK_OBJECT_HANDLE handle;
    *function = "C_CreateObject";
    return jwke_p11_token_functions(token)->C_CreateObject(session, c->template, c->count, &handle);
}

int jwke_p11_data_create(jwke_p11_token *token, const char *application, const char *label,
                         size_t label_len, const unsigned char *value, size_t value_len,
                         jwke_error *err)
{
    if (value_len > JWKE_DATA_VALUE_MAX)
        return jwke_fail_code(err, "ERR_INVALID_ARGUMENT",
                              "a data object's value of %zu bytes is over the limit of %d bytes",
                              value_len, JWKE_DATA_VALUE_MAX);
    if (label_len > JWKE_DATA_LABEL_MAX)
        return jwke_fail_code(err, "ERR_INVALID_ARGUMENT",
                              "a data object's label of %zu bytes is over the limit of %d bytes",
                              label_len, JWKE_DATA_LABEL_MAX);
    CK_OBJECT_CLASS data_class = CKO_DATA;
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE template[] = {
        {CKA_CLASS, &data_class, sizeof data_class},
        {CKA_TOKEN, &yes, sizeof yes},
        {CKA_PRIVATE, &yes, sizeof yes},
        {CKA_APPLICATION, (void *)application, (CK_ULONG)strlen(application)},
        {CKA_LABEL, (void *)label, (CK_ULONG)label_len},
        {CKA_VALUE, (void *)value, (CK_ULONG)value_len},
    };
    create_context c = {template, sizeof template / sizeof template[0]};
    return jwke_p11_run(token, create_op, &c, err);
}

typedef struct destroy_context {
    data_search search;
    const unsigned char *value;
    size_t value_len;
    size_t destroyed;
} destroy_context;

/* A retry after a recoverable failure searches again and finds only what
 * is left, so `destroyed` adds up across attempts. */
static CK_RV destroy_op(jwke_p11_token *token, CK_SESSION_HANDLE session, void *ctx,
                        const char **function, jwke_error *err)
{
    destroy_context *c = ctx;
    CK_OBJECT_HANDLE *handles = NULL;
    size_t n = 0;
    CK_RV rv = find_data(token, session, &c->search, &handles, &n, function, err);
    if (rv != CKR_OK)
        return rv;
    char label[JWKE_DATA_LABEL_MAX];
    unsigned char *value = malloc(JWKE_DATA_VALUE_MAX);
    if (!value) {
        free(handles);
        jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory reading data objects");
        return JWKE_OP_FAILED;
    }
    for (size_t i = 0; i < n && rv == CKR_OK; i++) {
        size_t label_len, value_len;
        *function = "C_GetAttributeValue";
        rv = read_data(token, session, handles[i], label, &label_len, value, &value_len, err);
        if (rv == CKR_OBJECT_HANDLE_INVALID) {
            rv = CKR_OK; /* already gone */
            continue;
        }
        if (rv != CKR_OK || value_len != c->value_len || memcmp(value, c->value, value_len) != 0)
            continue;
        *function = "C_DestroyObject";
        rv = jwke_p11_token_functions(token)->C_DestroyObject(session, handles[i]);
        if (rv == CKR_OBJECT_HANDLE_INVALID)
            rv = CKR_OK; /* another process destroyed it first */
        else if (rv == CKR_OK)
            c->destroyed++;
    }
    free(value);
    free(handles);
    return rv;
}

int jwke_p11_data_destroy(jwke_p11_token *token, const char *application, const char *label,
                          size_t label_len, const unsigned char *value, size_t value_len,
                          size_t *destroyed, jwke_error *err)
{
    destroy_context c = {{application, label, label_len}, value, value_len, 0};
    int result = jwke_p11_run(token, destroy_op, &c, err);
    *destroyed = c.destroyed;
    return result;
}
