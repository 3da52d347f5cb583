#!/usr/bin/env bash
# Run a command against a throwaway PostgreSQL server: its own data directory and
# port, started here and removed afterwards. DATABASE_URL points the command at it.
set -euo pipefail
bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
data=$(mktemp -d /tmp/imaging-pg.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg=()
if [ "$(id -u)" = 0 ]; then
  # PostgreSQL refuses to run as root.
  chown postgres "$data"
  as_pg=(runuser -u postgres --)
fi
cleanup() {
  status=$?
  if [ "$status" != 0 ] && [ -f "$data/server.log" ]; then
    # Deadlocks and lost connections, before the server's log goes (kept short: the
    # test summary above is what a reader of CI's last lines needs first).
    echo "=== PostgreSQL's deadlocks and fatal errors (exit $status) ==="
    grep -E -A3 "deadlock detected|FATAL|PANIC" "$data/server.log" | tail -n 16 || true
  fi
  "${as_pg[@]}" "$bindir/pg_ctl" -D "$data/db" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$data"
}
trap cleanup EXIT
"${as_pg[@]}" "$bindir/initdb" -D "$data/db" -U imaging --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
"${as_pg[@]}" "$bindir/pg_ctl" -D "$data/db" -l "$data/server.log" -w \
  -o "-p $port -k $data -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start >/dev/null
"${as_pg[@]}" "$bindir/createdb" -h 127.0.0.1 -p "$port" -U imaging imaging
export DATABASE_URL="postgres://imaging@127.0.0.1:$port/imaging"
echo "PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on port $port"
"$@"
