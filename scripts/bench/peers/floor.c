/* The floor of peers.sh: what signing a JWT with an HSM key cannot go
 * below. One fixed signing input (header.payload of a token made once);
 * per signature the host's SHA-256 (DigestInfo for RS256, the input itself
 * for EdDSA), one C_SignInit and one C_Sign on one session. No claims, no
 * base64url, no token building: every peer does more than this.
 *
 *   floor MODULE TOKEN_LABEL PIN ALG KEY_ID_HEX KID SECONDS */
#include <dlfcn.h>
#include <openssl/sha.h>

#include <p11-kit/pkcs11.h>

#include "jwt_common.h"

typedef struct {
    CK_FUNCTION_LIST_PTR fn;
    CK_SESSION_HANDLE session;
    CK_OBJECT_HANDLE key;
    CK_MECHANISM mechanism;
    int hash; /* 0: EdDSA signs the input itself */
    int digest_info;
    char input[1024];
    size_t input_len;
} floor_ctx;

static const unsigned char SHA256_DIGEST_INFO[] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48,
                                                   0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};

static int floor_sign(void *p, const char *header_b64, char *token)
{
    floor_ctx *c = p;
    (void)header_b64;
    unsigned char data[64], sig[1024];
    CK_BYTE_PTR in = (CK_BYTE_PTR)c->input;
    CK_ULONG in_len = (CK_ULONG)c->input_len, sig_len = sizeof sig;
    if (c->hash) {
        size_t off = 0;
        if (c->digest_info) {
            memcpy(data, SHA256_DIGEST_INFO, sizeof SHA256_DIGEST_INFO);
            off = sizeof SHA256_DIGEST_INFO;
        }
        SHA256((const unsigned char *)c->input, c->input_len, data + off);
        in = data;
        in_len = (CK_ULONG)(off + 32);
    }
    if (c->fn->C_SignInit(c->session, &c->mechanism, c->key) != CKR_OK ||
        c->fn->C_Sign(c->session, in, in_len, sig, &sig_len) != CKR_OK)
        return 1;
    memcpy(token, c->input, c->input_len);
    token[c->input_len] = '.';
    peer_b64url(sig, sig_len, token + c->input_len + 1);
    return 0;
}

static size_t unhex(const char *hex, unsigned char *out)
{
    size_t n = 0;
    for (; hex[0] && hex[1]; hex += 2)
        sscanf(hex, "%2hhx", &out[n++]);
    return n;
}

int main(int argc, char **argv)
{
    if (argc != 8) {
        fprintf(stderr, "usage: floor MODULE TOKEN_LABEL PIN ALG KEY_ID_HEX KID SECONDS\n");
        return 2;
    }
    const char *alg = argv[4];
    void *lib = dlopen(argv[1], RTLD_NOW);
    CK_C_GetFunctionList get = lib ? (CK_C_GetFunctionList)dlsym(lib, "C_GetFunctionList") : NULL;
    floor_ctx c = {0};
    if (!get || get(&c.fn) != CKR_OK || c.fn->C_Initialize(NULL) != CKR_OK)
        return fprintf(stderr, "floor: cannot load %s\n", argv[1]), 1;
    CK_SLOT_ID slots[64];
    CK_ULONG count = 64, i;
    c.fn->C_GetSlotList(CK_TRUE, slots, &count);
    for (i = 0; i < count; i++) {
        CK_TOKEN_INFO info;
        char label[33];
        if (c.fn->C_GetTokenInfo(slots[i], &info) != CKR_OK)
            continue;
        memcpy(label, info.label, 32);
        label[32] = 0;
        for (int j = 31; j >= 0 && label[j] == ' '; j--)
            label[j] = 0;
        if (strcmp(label, argv[2]) == 0)
            break;
    }
    if (i == count)
        return fprintf(stderr, "floor: no token %s\n", argv[2]), 1;
    if (c.fn->C_OpenSession(slots[i], CKF_SERIAL_SESSION, NULL, NULL, &c.session) != CKR_OK ||
        c.fn->C_Login(c.session, CKU_USER, (CK_UTF8CHAR_PTR)argv[3], strlen(argv[3])) != CKR_OK)
        return fprintf(stderr, "floor: cannot log in\n"), 1;
    unsigned char id[128];
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE search[] = {{CKA_CLASS, &cls, sizeof cls}, {CKA_ID, id, unhex(argv[5], id)}};
    CK_ULONG found = 0;
    c.fn->C_FindObjectsInit(c.session, search, 2);
    c.fn->C_FindObjects(c.session, &c.key, 1, &found);
    c.fn->C_FindObjectsFinal(c.session);
    if (found != 1)
        return fprintf(stderr, "floor: no private key with that id\n"), 1;
    c.hash = strcmp(alg, "EdDSA") != 0;
    c.digest_info = strcmp(alg, "RS256") == 0;
    c.mechanism.mechanism = !c.hash ? CKM_EDDSA : c.digest_info ? CKM_RSA_PKCS : CKM_ECDSA;
    char header[128];
    peer_header(alg, argv[6], header);
    c.input_len = peer_signing_input(header, c.input);
    return peer_run(floor_sign, &c, alg, argv[6], atof(argv[7]));
}
