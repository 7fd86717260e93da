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
    CK_RV rv = jwke_p11_find(token, session, search, s->label ? 3 : 2, handles, count, function, err);
    /* The states are private objects: a session the token logged out
     * (its last session closed idle) finds none of them and answers CKR_OK.
     * Read as "no states", that would look like a set never written:
     * log in and search again instead (jwke_p11_run's login repair). */
    if (rv == CKR_OK && (rv = jwke_p11_private_hidden(token, session)) != CKR_OK) {
        free(*handles);
        *handles = NULL;
        *count = 0;
    }
    return rv;
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

/* What each_data shows a visitor: one object, its label and value read
 * into each_data's own buffers (valid during the call only). */
typedef struct data_object {
    CK_OBJECT_HANDLE handle;
    const char *label;
    size_t label_len;
    const unsigned char *value;
    size_t value_len;
} data_object;

typedef CK_RV (*data_visit)(void *ctx, jwke_p11_token *token, CK_SESSION_HANDLE session,
                            const data_object *object, const char **function, jwke_error *err);

/* Told why one object could not be read (the walk goes on unless it
 * answers other than CKR_OK). */
typedef CK_RV (*data_unreadable)(void *ctx, const jwke_error *why, jwke_error *err);

/* Whether read_data's answer is about that one object (its size, its
 * attributes), not the session or the token: the walk skips such an object. */
static int object_unreadable(CK_RV rv, const jwke_error *err)
{
    switch (rv) {
    case JWKE_OP_FAILED:
        return err->code && strcmp(err->code, JWKE_ERR_TOKEN_LENGTH) == 0;
    case CKR_BUFFER_TOO_SMALL:
    case CKR_ATTRIBUTE_SENSITIVE:
    case CKR_ATTRIBUTE_TYPE_INVALID:
        return 1;
    default:
        return 0;
    }
}

/* Visits every data object the search finds on `session`; one destroyed
 * since the search (a writer superseded it) is skipped, one that cannot be
 * read is told to `unreadable` (NULL: skipped quietly) and skipped. A visit
 * that answers other than CKR_OK ends the walk with that answer. */
static CK_RV each_data(jwke_p11_token *token, CK_SESSION_HANDLE session, const data_search *search,
                       data_visit visit, data_unreadable unreadable, void *ctx,
                       const char **function, jwke_error *err)
{
    CK_OBJECT_HANDLE *handles = NULL;
    size_t n = 0;
    CK_RV rv = find_data(token, session, search, &handles, &n, function, err);
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
            rv = CKR_OK;
            continue;
        }
        if (object_unreadable(rv, err)) {
            jwke_error why = *err;
            if (rv != JWKE_OP_FAILED)
                jwke_fail_ckr(&why, "C_GetAttributeValue", rv);
            rv = unreadable ? unreadable(ctx, &why, err) : CKR_OK;
            continue;
        }
        if (rv == CKR_OK) {
            data_object object = {handles[i], label, label_len, value, value_len};
            rv = visit(ctx, token, session, &object, function, err);
        }
    }
    free(value);
    free(handles);
    return rv;
}

typedef struct find_context {
    data_search search;
    jwke_p11_data *found;
    size_t count;
    jwke_error *unreadable;
    size_t unreadable_count;
} find_context;

/* Keeps why one object could not be read. */
static CK_RV keep_unreadable(void *ctx, const jwke_error *why, jwke_error *err)
{
    find_context *c = ctx;
    jwke_error *grown = realloc(c->unreadable, (c->unreadable_count + 1) * sizeof *grown);
    if (!grown) {
        jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory reading data objects");
        return JWKE_OP_FAILED;
    }
    c->unreadable = grown;
    c->unreadable[c->unreadable_count++] = *why;
    return CKR_OK;
}

/* Keeps a copy of one object. */
static CK_RV keep_data(void *ctx, jwke_p11_token *token, CK_SESSION_HANDLE session,
                       const data_object *object, const char **function, jwke_error *err)
{
    (void)token, (void)session, (void)function;
    find_context *c = ctx;
    size_t label_len = object->label_len, value_len = object->value_len;
    jwke_p11_data *grown = realloc(c->found, (c->count + 1) * sizeof *grown);
    if (grown)
        c->found = grown;
    jwke_p11_data *d = grown ? &c->found[c->count] : NULL;
    char *label_copy = d ? malloc(label_len + 1) : NULL;
    unsigned char *value_copy = d ? malloc(value_len ? value_len : 1) : NULL;
    if (!label_copy || !value_copy) {
        free(label_copy);
        free(value_copy);
        jwke_fail_code(err, JWKE_ERR_OUT_OF_MEMORY, "out of memory reading data objects");
        return JWKE_OP_FAILED;
    }
    memcpy(label_copy, object->label, label_len);
    label_copy[label_len] = '\0';
    memcpy(value_copy, object->value, value_len);
    *d = (jwke_p11_data){.label = label_copy, .label_len = label_len, .value = value_copy,
                         .value_len = value_len};
    c->count++;
    return CKR_OK;
}

static CK_RV find_op(jwke_p11_token *token, CK_SESSION_HANDLE session, void *ctx,
                     const char **function, jwke_error *err)
{
    find_context *c = ctx;
    jwke_p11_data_free(c->found, c->count); /* from a failed first attempt */
    c->found = NULL;
    c->count = 0;
    free(c->unreadable);
    c->unreadable = NULL;
    c->unreadable_count = 0;
    return each_data(token, session, &c->search, keep_data, keep_unreadable, c, function, err);
}

int jwke_p11_data_find(jwke_p11_token *token, const char *application, const char *label,
                       size_t label_len, jwke_p11_data **found, size_t *count,
                       jwke_error **unreadable, size_t *unreadable_count, jwke_error *err)
{
    find_context c = {{application, label, label_len}, NULL, 0, NULL, 0};
    if (jwke_p11_run(token, find_op, &c, err) != 0) {
        jwke_p11_data_free(c.found, c.count);
        free(c.unreadable);
        return -1;
    }
    *found = c.found;
    *count = c.count;
    *unreadable = c.unreadable;
    *unreadable_count = c.unreadable_count;
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
        return jwke_fail_code(err, JWKE_ERR_INVALID_ARGUMENT,
                              "a data object's value of %zu bytes is over the limit of %d bytes",
                              value_len, JWKE_DATA_VALUE_MAX);
    if (label_len > JWKE_DATA_LABEL_MAX)
        return jwke_fail_code(err, JWKE_ERR_INVALID_ARGUMENT,
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

/* Destroys one object holding exactly the value asked for. */
static CK_RV destroy_matching(void *ctx, jwke_p11_token *token, CK_SESSION_HANDLE session,
                              const data_object *object, const char **function, jwke_error *err)
{
    (void)err;
    destroy_context *c = ctx;
    if (object->value_len != c->value_len || memcmp(object->value, c->value, c->value_len) != 0)
        return CKR_OK;
    *function = "C_DestroyObject";
    CK_RV rv = jwke_p11_token_functions(token)->C_DestroyObject(session, object->handle);
    if (rv == CKR_OBJECT_HANDLE_INVALID)
        return CKR_OK; /* another process destroyed it first */
    if (rv == CKR_OK)
        c->destroyed++;
    return rv;
}

/* A retry after a recoverable failure searches again and finds only what
 * is left, so `destroyed` adds up across attempts. */
static CK_RV destroy_op(jwke_p11_token *token, CK_SESSION_HANDLE session, void *ctx,
                        const char **function, jwke_error *err)
{
    destroy_context *c = ctx;
    /* an object too large to read cannot hold a value this wrote */
    return each_data(token, session, &c->search, destroy_matching, NULL, c, function, err);
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
