# Helpers the scripts share. Source it from the repository root: `. scripts/lib.sh`.
# shellcheck shell=bash

BIN="${BIN:-./target/release/ignition}"

# ign_server LOG ARGS...: starts `ignition server ARGS...` in the background, its output in LOG;
# its pid is left in IGN_PID.
ign_server() {
  local log=$1
  shift
  "$BIN" server "$@" >"$log" 2>&1 &
  IGN_PID=$!
}

# ign_wait URL [PID LOG]: waits up to 120 s until the server at URL answers `GET /`. If PID
# exits first, or time runs out, prints LOG (when given) and exits 1.
ign_wait() {
  local url=$1 pid=${2:-} log=${3:-}
  for _ in $(seq 1 600); do
    curl -fsS "$url/" >/dev/null 2>&1 && return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then break; fi
    sleep 0.2
  done
  echo "the server at $url did not start" >&2
  [ -z "$log" ] || cat "$log" >&2
  exit 1
}

# ign_stop_all: SIGTERM every background job of this shell and waits for them to end.
ign_stop_all() {
  # shellcheck disable=SC2046
  kill -TERM $(jobs -p) 2>/dev/null || true
  wait 2>/dev/null || true
}

# pg_start DIR: starts a throwaway PostgreSQL (Debian's postgresql package) with its data and
# its Unix socket in DIR, no TCP port; as root, it runs as the postgres user. Leaves its URL in
# PG_URL; pg_stop DIR stops it.
pg_start() {
  local dir=$1 bin run=()
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  mkdir -p "$dir"
  if [ "$(id -u)" -eq 0 ]; then chown postgres "$dir"; run=(runuser -u postgres --); fi
  "${run[@]}" "$bin/initdb" -D "$dir/data" -U ignition --auth trust --no-sync -E UTF8 --locale C >/dev/null
  "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-k $dir -c listen_addresses= -c fsync=off -c max_connections=200" start >/dev/null
  "${run[@]}" "$bin/createdb" -h "$dir" -U ignition ignition
  PG_URL="postgres://ignition@$(printf %s "$dir" | sed 's|%|%25|g; s|/|%2F|g')/ignition"
}

pg_stop() {
  local dir=$1 bin run=()
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  [ "$(id -u)" -eq 0 ] && run=(runuser -u postgres --)
  "${run[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
}

# median: the median of the numbers on stdin, one a line.
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'; }

# timing_part FILE PART: the median duration of PART (`PART;dur=MS`) in FILE, which holds
# Server-Timing header values, one a line.
timing_part() { tr ',' '\n' <"$1" | sed 's/^ *//' | grep "^$2;dur=" | sed 's/.*;dur=//' | median; }
