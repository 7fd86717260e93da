#include "p11_token.h"

#include <stdlib.h>
#include <string.h>

jwke_p11_token *jwke_p11_token_open(jwke_p11_module *module, CK_SLOT_ID slot, jwke_error *err)
{
    jwke_p11_token *token = calloc(1, sizeof *token);
    if (!token) {
        jwke_fail(err, "out of memory opening a token session");
        return NULL;
    }
    CK_RV rv = module->fn->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL,
                                         &token->session);
    if (rv != CKR_OK) {
        jwke_fail_ckr(err, "C_OpenSession", rv);
        free(token);
        return NULL;
    }
    module->references++; /* released in jwke_p11_token_close */
    token->module = module;
    token->slot = slot;
    token->open = 1;
    pthread_mutex_init(&token->lock, NULL);
    return token;
}

void jwke_p11_token_close(jwke_p11_token *token)
{
    if (!token || !token->open)
        return;
    token->module->fn->C_CloseSession(token->session);
    token->open = 0;
    pthread_mutex_destroy(&token->lock);
    jwke_p11_module_release(token->module);
    token->module = NULL;
}

int jwke_p11_login(jwke_p11_token *token, const char *pin, size_t pin_len, jwke_error *err)
{
    pthread_mutex_lock(&token->lock);
    CK_RV rv = token->module->fn->C_Login(token->session, CKU_USER, (CK_UTF8CHAR_PTR)pin,
                                          (CK_ULONG)pin_len);
    pthread_mutex_unlock(&token->lock);
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN)
        return jwke_fail_ckr(err, "C_Login", rv);
    return 0;
}

int jwke_p11_find(jwke_p11_token *token, CK_ATTRIBUTE *template, CK_ULONG template_len,
                  CK_OBJECT_HANDLE **found, size_t *count, jwke_error *err)
{
    CK_FUNCTION_LIST_PTR fn = token->module->fn;
    CK_RV rv = fn->C_FindObjectsInit(token->session, template, template_len);
    if (rv != CKR_OK)
        return jwke_fail_ckr(err, "C_FindObjectsInit", rv);

    size_t capacity = 16, n = 0;
    CK_OBJECT_HANDLE *handles = malloc(capacity * sizeof *handles);
    int result = 0;
    for (;;) {
        if (!handles) {
            result = jwke_fail(err, "out of memory searching the token");
            break;
        }
        if (n == capacity) {
            CK_OBJECT_HANDLE *grown = realloc(handles, 2 * capacity * sizeof *handles);
            if (!grown) {
                free(handles);
                handles = NULL;
                continue;
            }
            handles = grown;
            capacity *= 2;
        }
        CK_ULONG got = 0;
        rv = fn->C_FindObjects(token->session, handles + n, (CK_ULONG)(capacity - n), &got);
        if (rv != CKR_OK) {
            result = jwke_fail_ckr(err, "C_FindObjects", rv);
            break;
        }
        if (got == 0)
            break;
        n += got;
    }
    /* Always end the search, or the session stays busy with it. */
    rv = fn->C_FindObjectsFinal(token->session);
    if (result == 0 && rv != CKR_OK)
        result = jwke_fail_ckr(err, "C_FindObjectsFinal", rv);
    if (result != 0) {
        free(handles);
        return -1;
    }
    *found = handles;
    *count = n;
    return 0;
}
