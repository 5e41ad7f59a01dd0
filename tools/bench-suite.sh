#!/usr/bin/env bash
# The whole benchmark suite of issue 6 in one command: durable events/s of
# Cairn (over HTTP and through the library) beside PostgreSQL 15 and etcd 3.4,
# the load generator's own cost, the disk's limits, and the Cairn-only figures
# of the history and reconcile benches.
#
#   tools/bench-suite.sh [--quick] [--out DIR]
#
# It installs what is missing from Debian's packages (etcd-server, wrk, jq;
# PostgreSQL 15 when /usr/lib/postgresql/15/bin has no initdb), builds the
# benches once in release (`cargo bench --no-run`), then runs the built
# binaries directly:
#
#   1. disk-limits           -> DIR/disk.json
#   2. peers (every target at 1, 16 and 64 writers, batches of 1 and 100, and
#      the null-http generator point) -> DIR/peers.json
#   3. history --json-out DIR/history.json --skip-backup
#   4. reconcile --json-out DIR/reconcile.json --skip-lag
#   5. suite-report          -> DIR/results.json and DIR/results.md (printed)
#
# DIR defaults to bench-results/<UTC timestamp>/ (gitignored). Every server
# (PostgreSQL, etcd, Cairn daemons inside the bench processes) runs on a
# loopback port with its data under one temp dir; a trap on EXIT, INT and TERM
# stops every bench process and peer server and removes that dir, so nothing
# is left running after a normal run, a failure or Ctrl-C. A step that fails
# is written to DIR/failures.txt and the suite goes on; the exit status is
# then non-zero.
#
# --quick is a smoke run of about two minutes after the build: 1 s points at 1
# and 64 writers, a small history and reconcile. CARGO_TARGET_DIR is honoured.
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

QUICK=0
OUT=
while (($#)); do
	case $1 in
	--quick) QUICK=1 ;;
	--out)
		OUT=${2:?--out takes a directory}
		shift
		;;
	-h | --help)
		sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "bench-suite.sh: unknown argument $1 (--quick, --out DIR)" >&2
		exit 2
		;;
	esac
	shift
done

STARTED=$(date +%s)
OUT=${OUT:-bench-results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT" || exit 1
OUT=$(realpath "$OUT")
FAILURES=$OUT/failures.txt
: >"$FAILURES"
# One line per step: name, wall seconds, exit status (for the report).
STEPS=$OUT/steps.tsv
: >"$STEPS"
# The data of every bench and server lives here; PostgreSQL runs as the user
# postgres when we are root, so the dir must be open to it.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cairn-suite-XXXXXX") || exit 1
chmod 755 "$WORK"
PEERS_DIR=$WORK/peers
# The process (and process group) of the step that runs now.
CHILD=

log() {
	echo "bench-suite: $*" >&2
}

cleanup() {
	local status=$?
	trap - EXIT INT TERM
	if [[ -n $CHILD ]]; then
		log "stopping step process group $CHILD"
		kill -TERM -- "-$CHILD" "$CHILD" 2>/dev/null
		local tries=0
		while kill -0 "$CHILD" 2>/dev/null && ((tries < 100)); do
			sleep 0.1
			tries=$((tries + 1))
		done
		kill -KILL -- "-$CHILD" "$CHILD" 2>/dev/null
		# The point children of a bench are in its process group too.
		sleep 0.2
	fi
	# The peers bench stops its servers itself; this is for when it was
	# killed before it could.
	# Each peer target has its own directory, named after it.
	local dir kind keep_work=0
	for dir in etcd etcd-txn postgres; do
		kind=${dir%-txn}
		if [[ -e $PEERS_DIR/$dir/etcd.pid || -e $PEERS_DIR/$dir/data/postmaster.pid ]]; then
			log "stopping $kind left in $PEERS_DIR/$dir"
			"$ROOT/tools/peers.sh" stop "$kind" "$PEERS_DIR/$dir" >/dev/null 2>&1 || {
				log "could not stop $kind in $PEERS_DIR/$dir: it may still run; $WORK is kept"
				keep_work=1
			}
		fi
	done
	((keep_work)) || rm -rf "$WORK"
	exit "$status"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# Runs a step in its own session (so the trap can stop it and all its
# children at once, and a Ctrl-C reaches only this script), with stdout to
# the file $2 (or to stderr for "-"). A failure is recorded, not fatal.
run_step() {
	local name=$1 stdout=$2 status begun
	shift 2
	begun=$(date +%s)
	log "== $name: $*"
	if [[ $stdout == - ]]; then
		setsid "$@" >&2 &
	else
		setsid "$@" >"$stdout" &
	fi
	CHILD=$!
	wait "$CHILD"
	status=$?
	# Anything the step left behind in its session goes with it.
	kill -KILL -- "-$CHILD" 2>/dev/null
	CHILD=
	printf '%s\t%s\t%s\n' "$name" "$(($(date +%s) - begun))" "$status" >>"$STEPS"
	if ((status != 0)); then
		log "$name failed with status $status"
		echo "$name: exit status $status" >>"$FAILURES"
	fi
	return "$status"
}

install_packages() {
	local missing=() sudo=()
	command -v etcd >/dev/null || missing+=(etcd-server)
	command -v wrk >/dev/null || missing+=(wrk)
	command -v jq >/dev/null || missing+=(jq)
	[[ -x ${PG_BIN:-/usr/lib/postgresql/15/bin}/initdb ]] || missing+=(postgresql-15)
	((${#missing[@]})) || return 0
	if [[ $(id -u) -ne 0 ]]; then
		if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
			sudo=(sudo -n)
		else
			log "missing ${missing[*]} and not root without password-less sudo"
			echo "install: cannot install ${missing[*]}" >>"$FAILURES"
			return 1
		fi
	fi
	log "installing ${missing[*]}"
	"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2 ||
		{ "${sudo[@]}" apt-get update -q >&2 &&
			"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2; } ||
		{
			echo "install: apt-get install ${missing[*]} failed" >>"$FAILURES"
			return 1
		}
	# Debian's etcd-server starts a system-wide etcd where systemd runs; it is
	# not ours to leave running.
	if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
		"${sudo[@]}" systemctl disable --now etcd >&2 || log "could not stop the etcd service"
	fi
}

install_packages

if ((QUICK)); then
	MODE=quick
	SECONDS_PER_POINT=1
	WRITERS=1,64
	DISK_SECONDS=1
	HISTORY_ARGS=(--events 20000 --clusters 100 --point-reads 200 --time-reads 50 --http-reads 50 --stream-seconds 2)
	RECONCILE_ARGS=(--machines 200)
else
	MODE=full
	SECONDS_PER_POINT=3
	WRITERS=1,16,64
	DISK_SECONDS=3
	HISTORY_ARGS=()
	RECONCILE_ARGS=()
fi

# One release build of every bench the suite runs; the binaries' paths come
# from cargo's JSON messages.
BUILD_STARTED=$(date +%s)
BENCHES=(peers disk-limits history reconcile suite-report)
run_step build "$WORK/build.json" cargo bench --no-run --message-format=json \
	$(printf -- '--bench %s ' "${BENCHES[@]}") || {
	log "the build failed; nothing to run"
	exit 1
}
BUILD_SECONDS=$(($(date +%s) - BUILD_STARTED))
declare -A BIN
while read -r name path; do
	BIN[$name]=$path
done < <(jq -r 'select(.reason == "compiler-artifact" and .executable != null
	and (.target.kind | index("bench"))) | "\(.target.name) \(.executable)"' "$WORK/build.json")
for bench in "${BENCHES[@]}"; do
	[[ -n ${BIN[$bench]:-} ]] || {
		log "no executable for bench $bench in cargo's output"
		exit 1
	}
done

# Temp dirs of the benches (Cairn's data dirs, disk-limits' scratch files)
# go under WORK too.
export TMPDIR=$WORK

run_step disk-limits "$OUT/disk.json" "${BIN[disk-limits]}" --dir "$WORK" \
	--seconds "$DISK_SECONDS" --json

run_step peers - "${BIN[peers]}" --writers "$WRITERS" --batch 1,100 \
	--seconds "$SECONDS_PER_POINT" --targets cairn-http,cairn-lib,etcd,etcd-txn,postgres,null-http \
	--peers-dir "$PEERS_DIR" --json-out "$OUT/peers.json"

# The history and reconcile benches write one JSON object of figures to the
# file given with --json-out.
run_step history "$OUT/history.log" "${BIN[history]}" --json-out "$OUT/history.json" \
	--skip-backup "${HISTORY_ARGS[@]}"

run_step reconcile "$OUT/reconcile.log" "${BIN[reconcile]}" --json-out "$OUT/reconcile.json" \
	--skip-lag "${RECONCILE_ARGS[@]}"

WALL_SECONDS=$(($(date +%s) - STARTED))
log "== report"
setsid "${BIN[suite-report]}" --out "$OUT" --data-dir "$WORK" --mode "$MODE" \
	--wall-seconds "$WALL_SECONDS" --build-seconds "$BUILD_SECONDS" &
CHILD=$!
wait "$CHILD"
REPORT_STATUS=$?
CHILD=
log "results in $OUT/results.md and $OUT/results.json (total ${WALL_SECONDS} s, build ${BUILD_SECONDS} s)"
if [[ -s $FAILURES ]] || ((REPORT_STATUS != 0)); then
	log "the run is not whole; see the Failures section of $OUT/results.md"
	exit 1
fi
exit 0
