#!/usr/bin/env bash
# Starts and stops the peers of the benchmark suite (issue 6) on loopback ports.
#
#   tools/peers.sh start postgres|etcd DIR   # prints the port to connect to
#   tools/peers.sh stop  postgres|etcd DIR
#
# DIR is a throwaway directory (made when missing) that holds everything of one
# server: DIR/data (the cluster or etcd data dir), DIR/<peer>.log, DIR/port, and
# for etcd DIR/etcd.pid; for PostgreSQL also its unix socket. Only the port goes
# to stdout; progress and errors go to stderr.
#
# PostgreSQL: a cluster made with initdb (trust authentication, so no password),
# fsync and synchronous_commit on, listening on 127.0.0.1 and a socket in DIR,
# with the suite's events table in the database "postgres" for user "postgres".
# PostgreSQL refuses to run as root, so as root the server runs as the user
# "postgres" (DIR is handed over to it).
#
# etcd: a single member with the defaults except the data dir and loopback
# client and peer URLs on free ports. Debian's etcd-server is installed when
# `etcd` is missing (as root, or through sudo). The JSON gateway of etcd 3.4
# answers on /v3/kv/put (and /v3beta/kv/put); start checks it with one put.
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

die() {
	echo "peers.sh: $*" >&2
	exit 1
}

log() {
	echo "peers.sh: $*" >&2
}

usage() {
	die "usage: $0 start|stop postgres|etcd DIR"
}

# Prints a TCP port on 127.0.0.1 that nothing listens on. Another process may
# take it before the server binds it; the server then fails to start, loudly.
free_port() {
	local port tries=0
	while ((tries < 100)); do
		port=$((20000 + RANDOM % 40000))
		if ! ss -Htan "( sport = :$port )" | grep -q .; then
			echo "$port"
			return 0
		fi
		tries=$((tries + 1))
	done
	die "no free port found"
}

# Succeeds when process $1 runs. A zombie does not count: a server that
# exited waits as one until its parent (after this script exits, PID 1, which
# in some containers reaps late) collects it.
alive() {
	local state
	state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
	[[ -n $state && $state != Z ]]
}

# Runs a command as the owner of the PostgreSQL cluster: the user "postgres"
# when we are root, ourselves otherwise.
as_pg_user() {
	if [[ $(id -u) -eq 0 ]]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

start_postgres() {
	local dir=$1 port
	[[ -x $PG_BIN/initdb ]] || die "no PostgreSQL 15 in $PG_BIN (set PG_BIN)"
	[[ ! -e $dir/data ]] || die "$dir/data exists; stop and remove it first"
	mkdir -p "$dir"
	if [[ $(id -u) -eq 0 ]]; then
		chown -R postgres: "$dir"
		as_pg_user test -w "$dir" ||
			die "the user postgres cannot reach $dir (a parent directory is closed to it, as mktemp -d makes them)"
	fi
	port=$(free_port)
	log "initdb in $dir/data"
	as_pg_user "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust \
		--encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
		die "initdb failed; see $dir/initdb.log"
	# Settings are appended to postgresql.conf, so a later pg_ctl start on the
	# same directory gets the same ones.
	as_pg_user tee -a "$dir/data/postgresql.conf" >/dev/null <<EOF
# Written by tools/peers.sh.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
fsync = on
synchronous_commit = on
max_connections = 200
EOF
	as_pg_user "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start >&2 ||
		die "pg_ctl start failed; see $dir/postgres.log"
	echo "$port" >"$dir/port"
	as_pg_user "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres >&2 <<'EOF'
CREATE TABLE events (
    seq bigserial primary key,
    id uuid not null unique,
    stream text not null,
    version bigint not null,
    type text not null,
    payload jsonb not null,
    created_at timestamptz not null default now(),
    unique (stream, version)
);
EOF
	log "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$port, events table made"
	echo "$port"
}

stop_postgres() {
	local dir=$1 pid=
	[[ -d $dir/data ]] || die "no cluster in $dir/data"
	if [[ -f $dir/data/postmaster.pid ]]; then
		pid=$(head -n1 "$dir/data/postmaster.pid")
		as_pg_user "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >&2 ||
			log "pg_ctl stop failed"
	fi
	if [[ -n $pid ]] && alive "$pid"; then
		die "postgres (pid $pid) still runs"
	fi
	log "PostgreSQL in $dir stopped"
}

install_etcd() {
	local sudo=()
	if [[ $(id -u) -ne 0 ]]; then
		if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
			sudo=(sudo -n)
		else
			die "etcd is missing and cannot be installed: not root and no password-less sudo (apt-get install etcd-server)"
		fi
	fi
	log "installing Debian's etcd-server"
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server >&2 ||
		{ "${sudo[@]}" apt-get update -q >&2 &&
			"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server >&2; } ||
		die "apt-get install etcd-server failed"
	# On a machine with systemd the package starts a system-wide etcd on the
	# default ports. It is not ours to leave running.
	if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
		log "stopping and disabling the etcd service the package started"
		"${sudo[@]}" systemctl disable --now etcd >&2 || log "could not stop the etcd service"
	fi
}

start_etcd() {
	local dir=$1 cport pport pid key value answer tries=0
	command -v etcd >/dev/null || install_etcd
	[[ ! -e $dir/data ]] || die "$dir/data exists; stop and remove it first"
	mkdir -p "$dir"
	cport=$(free_port)
	pport=$(free_port)
	[[ $cport != "$pport" ]] || pport=$(free_port)
	# setsid puts etcd in its own session, so it outlives this script and
	# does not get the terminal's signals.
	setsid etcd --name bench --data-dir "$dir/data" \
		--listen-client-urls "http://127.0.0.1:$cport" \
		--advertise-client-urls "http://127.0.0.1:$cport" \
		--listen-peer-urls "http://127.0.0.1:$pport" \
		--initial-advertise-peer-urls "http://127.0.0.1:$pport" \
		--initial-cluster "bench=http://127.0.0.1:$pport" \
		>"$dir/etcd.log" 2>&1 </dev/null &
	pid=$!
	echo "$pid" >"$dir/etcd.pid"
	echo "$cport" >"$dir/port"
	until curl -fsS "http://127.0.0.1:$cport/health" 2>/dev/null | grep -q '"health":"true"'; do
		alive "$pid" || die "etcd exited; see $dir/etcd.log"
		tries=$((tries + 1))
		((tries < 200)) || die "etcd not healthy after 20 s; see $dir/etcd.log"
		sleep 0.1
	done
	# One put through the JSON gateway, as the load generator will do it.
	key=$(printf 'peers-check' | base64)
	value=$(printf '{"ok":true}' | base64)
	answer=$(curl -fsS -X POST "http://127.0.0.1:$cport/v3/kv/put" \
		-d "{\"key\":\"$key\",\"value\":\"$value\"}") ||
		die "etcd's JSON gateway refused POST /v3/kv/put"
	grep -q '"revision"' <<<"$answer" || die "unexpected answer from /v3/kv/put: $answer"
	log "etcd $(etcd --version | awk '/etcd Version/ {print $3}') on 127.0.0.1:$cport (peer $pport), pid $pid; /v3/kv/put answered $answer"
	echo "$cport"
}

stop_etcd() {
	local dir=$1 pid tries=0
	[[ -f $dir/etcd.pid ]] || die "no $dir/etcd.pid"
	pid=$(cat "$dir/etcd.pid")
	if alive "$pid"; then
		kill -TERM "$pid"
		while alive "$pid"; do
			tries=$((tries + 1))
			if ((tries == 100)); then
				log "etcd (pid $pid) ignored SIGTERM for 10 s; killing it"
				kill -KILL "$pid" 2>/dev/null || true
			fi
			((tries < 150)) || die "etcd (pid $pid) still runs"
			sleep 0.1
		done
	fi
	rm -f "$dir/etcd.pid"
	log "etcd in $dir stopped"
}

[[ $# -eq 3 ]] || usage
action=$1
peer=$2
# An absolute path, since PostgreSQL's socket directory and etcd's data dir
# must not depend on where the server happens to run.
dir=$(realpath -m "$3")
case "$action/$peer" in
start/postgres) start_postgres "$dir" ;;
stop/postgres) stop_postgres "$dir" ;;
start/etcd) start_etcd "$dir" ;;
stop/etcd) stop_etcd "$dir" ;;
*) usage ;;
esac
