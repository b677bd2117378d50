#!/usr/bin/env bash
# Runs OpenStack Keystone 30.0.0 for berth's docker-compose.test.yml:
# SQLite, fernet tokens, one gunicorn worker.
#
# On first start (no $KEYSTONE_DATA_DIR/.initialised): db_sync,
# fernet_setup, credential_setup, bootstrap (user `admin`, project `admin`,
# roles admin > manager > member > reader, region RegionOne), then, through
# the REST API of a Keystone listening on loopback only, berth's service
# account with `reader` on the system and an optional demo user with
# `member` on a demo project (setup_accounts.py). Then it serves.
#
# Environment (defaults in brackets):
#   KEYSTONE_DATA_DIR              database, keys, keystone.conf [/var/lib/keystone]
#   KEYSTONE_LISTEN                address gunicorn binds [0.0.0.0:5000]
#   KEYSTONE_PUBLIC_URL            endpoint URL in the catalog [http://keystone:5000/v3/]
#   KEYSTONE_ADMIN_PASSWORD_FILE   bootstrap admin's password [/run/secrets/keystone_admin_password]
#   KEYSTONE_BERTH_USER            berth's service account [berth]
#   KEYSTONE_BERTH_PASSWORD_FILE   its password [/run/secrets/berth_keystone_password]
#   KEYSTONE_DEMO_USER, KEYSTONE_DEMO_PASSWORD, KEYSTONE_DEMO_PROJECT [demo]
#                                  a demo user with `member` on the project (none if unset)
#   KEYSTONE_PASSWORD_HASH_ROUNDS  bcrypt cost [Keystone's default, 12]
#   KEYSTONE_SETUP_PORT            loopback port of the first-start setup [5001]
# keystone-manage, gunicorn and python are taken from PATH.
set -euo pipefail
umask 077

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DATA="${KEYSTONE_DATA_DIR:-/var/lib/keystone}"
LISTEN="${KEYSTONE_LISTEN:-0.0.0.0:5000}"
PUBLIC_URL="${KEYSTONE_PUBLIC_URL:-http://keystone:5000/v3/}"
SETUP_PORT="${KEYSTONE_SETUP_PORT:-5001}"
export KEYSTONE_ADMIN_PASSWORD_FILE="${KEYSTONE_ADMIN_PASSWORD_FILE:-/run/secrets/keystone_admin_password}"
export KEYSTONE_BERTH_PASSWORD_FILE="${KEYSTONE_BERTH_PASSWORD_FILE:-/run/secrets/berth_keystone_password}"

log() { echo "keystone-entrypoint: $*" >&2; }

for f in "$KEYSTONE_ADMIN_PASSWORD_FILE" "$KEYSTONE_BERTH_PASSWORD_FILE"; do
    if [ ! -r "$f" ]; then
        log "cannot read $f"
        exit 1
    fi
done

mkdir -p "$DATA"
(umask 077 && mkdir -p "$DATA/fernet-keys" "$DATA/credential-keys")
CONF="$DATA/keystone.conf"
{
    printf '[DEFAULT]\nuse_stderr = true\n'
    printf '[database]\nconnection = sqlite:///%s/keystone.db\n' "$DATA"
    printf '[token]\nprovider = fernet\n'
    printf '[fernet_tokens]\nkey_repository = %s/fernet-keys\n' "$DATA"
    printf '[fernet_receipts]\nkey_repository = %s/fernet-keys\n' "$DATA"
    printf '[credential]\nkey_repository = %s/credential-keys\n' "$DATA"
    if [ -n "${KEYSTONE_PASSWORD_HASH_ROUNDS:-}" ]; then
        printf '[identity]\npassword_hash_rounds = %s\n' "$KEYSTONE_PASSWORD_HASH_ROUNDS"
    fi
    # The memory cache is per process: right with gunicorn's single worker.
    printf '[cache]\nenabled = true\nbackend = dogpile.cache.memory\n'
} >"$CONF"
export OS_KEYSTONE_CONFIG_DIR="$DATA"

# One worker (the memory cache is per process) with four threads; the WSGI
# module runs one request at a time (SQLite).
GUNICORN=(gunicorn --workers 1 --worker-class gthread --threads 4
    --no-control-socket --graceful-timeout 5 --pythonpath "$HERE")

# A secret file's content without trailing line ends (as berth reads its own).
secret() {
    python -c 'import sys; print(open(sys.argv[1]).read().rstrip("\r\n"), end="")' "$1"
}

if [ ! -e "$DATA/.initialised" ]; then
    user="$(id -un 2>/dev/null || id -u)"
    group="$(id -gn 2>/dev/null || id -g)"
    manage() { keystone-manage --config-file "$CONF" "$@"; }
    log "first start: initialising $DATA"
    manage db_sync
    manage fernet_setup --keystone-user "$user" --keystone-group "$group"
    manage credential_setup --keystone-user "$user" --keystone-group "$group"
    # (The password through the environment, not the command line.)
    OS_BOOTSTRAP_PASSWORD="$(secret "$KEYSTONE_ADMIN_PASSWORD_FILE")" manage bootstrap \
        --bootstrap-admin-url "$PUBLIC_URL" \
        --bootstrap-public-url "$PUBLIC_URL" \
        --bootstrap-internal-url "$PUBLIC_URL" \
        --bootstrap-region-id RegionOne

    log "creating the accounts through a Keystone on 127.0.0.1:$SETUP_PORT"
    "${GUNICORN[@]}" --bind "127.0.0.1:$SETUP_PORT" berth_keystone_wsgi:application &
    setup_pid=$!
    status=0
    python "$HERE/setup_accounts.py" "http://127.0.0.1:$SETUP_PORT/v3" || status=$?
    kill -TERM "$setup_pid" 2>/dev/null || true
    wait "$setup_pid" || true
    if [ "$status" != 0 ]; then
        log "account setup failed"
        exit "$status"
    fi
    touch "$DATA/.initialised"
    log "initialised"
fi

log "serving on $LISTEN"
exec "${GUNICORN[@]}" --bind "$LISTEN" --access-logfile - berth_keystone_wsgi:application
