#!/bin/sh
# The README's first command: set up, then run the main job on the embedded
# default: a throwaway SoftHSM token (label "hydra") and the embedded
# software store (SQLite, AES-256-GCM with a random secret), both in a
# temporary folder removed at exit. The startup sets are generated, the
# ID-token JWK Set printed, a JWT signed and verified.
#   scripts/demo.sh --no-hsm   the same with the software store alone
set -eu
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/softhsm-env.sh
trap 'rm -rf "$JWKE_TMP"' EXIT

export SECRETS_SYSTEM="$(openssl rand -hex 24)"
export DSN="sqlite://$JWKE_TMP/keys.sqlite"
if [ "${1:-}" = "--no-hsm" ]; then
  export HSM_ENABLED=false
else
  softhsm2-util --init-token --free --label hydra --so-pin 0000 --pin 1234 >/dev/null
  export HSM_ENABLED=true
  export HSM_LIBRARY=/usr/lib/softhsm/libsofthsm2.so
  export HSM_TOKEN_LABEL=hydra
  export HSM_PIN=1234
fi
build/jwkengine scripts/demo.lua
