# Sourced: points SoftHSM at a fresh throwaway token folder in $JWKE_TMP
# (created here, removed by the caller's trap). It makes no token: each caller
# initializes its own (scripts/demo.sh makes "hydra"; each spec makes one).
JWKE_TMP=$(mktemp -d /tmp/jwkengine.XXXXXX)
mkdir -p "$JWKE_TMP/tokens"
cat > "$JWKE_TMP/softhsm2.conf" <<CONF
directories.tokendir = $JWKE_TMP/tokens
objectstore.backend = file
log.level = ERROR
CONF
export SOFTHSM2_CONF="$JWKE_TMP/softhsm2.conf"
