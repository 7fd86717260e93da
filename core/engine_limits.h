/* Every limit and default jwkengine's layers share, each written once.
 *
 * The C core reads these directly; the Lua policy reads them through the
 * binding (core.limits()), so a default in config.lua, a floor in jws.lua
 * and the check in C can never drift apart. */
#ifndef JWKE_ENGINE_LIMITS_H
#define JWKE_ENGINE_LIMITS_H

/* The largest RSA key jwkengine accepts (imported, generated or found on a
 * token), and so the largest signature it makes or checks (alg.h). */
#define JWKE_RSA_MAX_BITS 16384

/* The smallest RSA key that signs or verifies anywhere, whatever a caller
 * asks for (options.min_rsa_bits only raises it), and the smallest a
 * software key may be generated with. */
#define JWKE_RSA_MIN_BITS 2048

/* Smallest RSA modulus a key object is even built for (a JWK, a PEM, a
 * token's key); the signing and verifying floors above apply on top. */
#define JWKE_RSA_ABSOLUTE_MIN_BITS 512

/* The size of a generated RSA key when the caller names none (HSM and
 * software alike: Hydra's RS256 = RSA 4096). */
#define JWKE_RSA_GENERATE_BITS 4096

/* hsm.min_rsa_bits when the configuration does not lower it: RSA keys on
 * the token smaller than this are refused (Hydra's rule). */
#define JWKE_HSM_MIN_RSA_BITS 4096

/* The shortest secret that may seal the software store (Hydra asks for 16
 * characters for secrets.system[0]). */
#define JWKE_MIN_SECRET_LENGTH 16

/* The PKCS#11 session pool's defaults: hsm.max_sessions,
 * hsm.session_wait_ms, hsm.reinit_interval_ms, hsm.reinit_interval_max_ms
 * and hsm.session_idle_max. The backoff during an outage starts at the
 * interval and doubles up to the max: an HSM back from an outage signs
 * again within about the max (2 s). The idle check comes well before the
 * shortest idle timeout known (YubiHSM 2: 30 s) and costs one
 * C_GetSessionInfo per quiet period. */
#define JWKE_POOL_MAX_SESSIONS 4
#define JWKE_POOL_SESSION_WAIT_MS 5000
#define JWKE_POOL_REINIT_INTERVAL_MS 1000
#define JWKE_POOL_REINIT_INTERVAL_MAX_MS 2000
#define JWKE_POOL_SESSION_IDLE_MAX_MS 20000

/* The most sessions a pool holds: its arrays have this many places, so the
 * pool caps max_sessions here (a memory-safety bound; hsm.max_sessions's
 * range in lua/jwkengine/config_settings.lua is the one a user meets). */
#define JWKE_POOL_LIMIT 64

/* The largest X.509 certificate (DER) read from a token or a store or
 * made by `keys cert`: a certificate is a few KB (an RSA 16384 key and
 * its signature are 4 KB together); a token reporting more is refused by
 * name, never trusted. */
#define JWKE_CERTIFICATE_MAX_LEN (16 * 1024)

#endif
