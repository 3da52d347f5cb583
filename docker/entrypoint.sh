#!/bin/sh
# Container entrypoint: refuse to start without a real SECRET_KEY, then run the
# command as PID 1 (exec), so SIGTERM from `docker stop` reaches gunicorn,
# celery or runscp directly and each can shut down gracefully.
set -eu

if [ -z "${SECRET_KEY:-}" ] && [ -z "${SECRET_KEY_FILE:-}" ]; then
    echo "imaging: SECRET_KEY (or SECRET_KEY_FILE) is not set; put it in docker/.env" >&2
    echo "imaging: e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(50))'" >&2
    exit 64
fi

exec "$@"
