#!/bin/sh
# The README's first command: set up, make a throwaway SoftHSM token, and run
# the main job on it (startup sets generated, JWK Set printed, a JWT signed
# and verified).
set -eu
cd "$(dirname "$0")/.."
scripts/setup.sh
. scripts/softhsm-env.sh
trap 'rm -rf "$JWKE_TMP"' EXIT
softhsm2-util --init-token --free --label hydra --so-pin 0000 --pin 1234 >/dev/null

export HSM_ENABLED=true
export HSM_LIBRARY=/usr/lib/softhsm/libsofthsm2.so
export HSM_TOKEN_LABEL=hydra
export HSM_PIN=1234
build/jwkengine scripts/demo.lua
