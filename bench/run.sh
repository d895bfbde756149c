#!/usr/bin/env bash
# bench/run.sh — zfaas benchmarks (`make bench`, which builds bin/zfaas and
# build/examples first). Prints every figure beside a baseline measured in
# the same run; see bench/README.md for what each figure means.
#
# It runs the Go micro-benchmarks, bench/policybench (policyd against
# upstream OPA, which it serves itself on 127.0.0.1) and bench/identitybench
# (the Workload API on a Unix socket in $WORK) and bench/tlcpbench (TLCP
# against TLS 1.3 handshakes and bulk, in process) and bench/sandboxbench
# (the process, container and microvm drivers through a real worker, with
# its own containerd), then starts `zfaas up`
# on kernel-chosen 127.0.0.1 ports in a temporary data directory and runs
# bench/invokebench against it. It always stops the platform (SIGTERM) and
# removes the directory.
#
# Environment:
#   ZFAAS=bin/zfaas  EXAMPLES=build/examples  GO=go
#   MICRO_BENCHTIME=0.5s   -benchtime of the Go micro-benchmarks ("" skips them)
#   POLICY_BENCH=1         0 skips the policy benchmark
#   POLICY_FLAGS="..."     extra policybench flags, e.g. "-decisions 5000 -pushes 3"
#   IDENTITY_BENCH=1       0 skips the identity (Workload API) benchmark
#   EGRESS_BENCH=1         0 skips the eBPF egress benchmark
#   EGRESS_FLAGS="..."     extra egressbench flags, e.g. "-samples 1000 -rules 5000"
#   IDENTITY_FLAGS="..."   extra identitybench flags, e.g. "-samples 500"
#   TLCP_BENCH=1           0 skips the TLCP benchmark (bench/tlcpbench)
#   TLCP_FLAGS="..."       extra tlcpbench flags, e.g. "-duration 6s -bulk 2s"
#   SANDBOX_BENCH=1        0 skips the sandbox driver benchmark (bench/sandboxbench)
#   SANDBOX_FLAGS="..."    extra sandboxbench flags, e.g. "-drivers process,container -cold 10"
#   OPA=path               the upstream OPA binary (default: `go tool -n opa`,
#                          which builds the version in go.mod once and caches it)
#   BENCH_FLAGS="..."      extra invokebench flags, e.g. "-cold 5 -duration 2s"
#   UP_FLAGS="..."         extra `zfaas up` flags, e.g. "--config bench.yaml"
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
ZFAAS=${ZFAAS:-bin/zfaas}
EXAMPLES=${EXAMPLES:-build/examples}
MICRO_BENCHTIME=${MICRO_BENCHTIME-0.5s}
POLICY_BENCH=${POLICY_BENCH:-1}
IDENTITY_BENCH=${IDENTITY_BENCH:-1}
EGRESS_BENCH=${EGRESS_BENCH:-1}
TLCP_BENCH=${TLCP_BENCH:-1}
SANDBOX_BENCH=${SANDBOX_BENCH:-1}
# Same settings as `make build`, so the packages it compiled are reused.
export CGO_ENABLED=${CGO_ENABLED:-0}

die() { echo "bench: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root: the zfaas process sandbox uses Linux namespaces and cgroups (try: sudo make bench)"
[ -x "$ZFAAS" ] || die "$ZFAAS is missing: run make build examples (make bench does)"
for ex in http-echo hello python-hello node-hello; do
	[ -f "$EXAMPLES/$ex/zfaas.yaml" ] || die "$EXAMPLES/$ex is missing: run make examples"
done

WORK=$(mktemp -d /tmp/zfaas-bench.XXXXXX)
UP_PID=
BENCH_PID=

# mounted_under reports whether anything is still mounted below $1, so that
# cleanup never deletes through a mount the platform left behind.
mounted_under() { awk -v d="$1/" 'index($5 "/", d) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; }

cleanup() {
	local status=$?
	trap - EXIT INT TERM
	if [ -n "$BENCH_PID" ] && kill -0 "$BENCH_PID" 2>/dev/null; then
		kill -TERM "$BENCH_PID" 2>/dev/null || true
		wait "$BENCH_PID" 2>/dev/null || true
	fi
	if [ -n "$UP_PID" ] && kill -0 "$UP_PID" 2>/dev/null; then
		kill -TERM "$UP_PID" 2>/dev/null || true
		for _ in $(seq 1 150); do kill -0 "$UP_PID" 2>/dev/null || break; sleep 0.1; done
		if kill -0 "$UP_PID" 2>/dev/null; then
			echo "bench: the platform did not stop within 15s of SIGTERM; killing it" >&2
			kill -KILL "$UP_PID" 2>/dev/null || true
		fi
		wait "$UP_PID" 2>/dev/null || true
	fi
	if [ "$status" != 0 ] && [ -s "$WORK/up.log" ]; then
		echo "bench: failed; last lines of the platform's log:" >&2
		tail -n 20 "$WORK/up.log" >&2
	fi
	if mounted_under "$WORK"; then
		echo "bench: something is still mounted under $WORK; not removing it" >&2
	else
		rm -rf "$WORK"
	fi
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

t0=$SECONDS
micro_status=0
if [ -n "$MICRO_BENCHTIME" ]; then
	echo "== Go micro-benchmarks (each beside its baseline-* floor; printed as go test prints them)"
	# Optional figures: a failure is reported, and the invoke benchmarks still run.
	"$GO" test -trimpath -count=1 -run '^$' -bench . -benchtime "$MICRO_BENCHTIME" ./bench/micro/ || micro_status=$?
	echo "== cluster: a remote worker's gRPC hop (mTLS, 1 KiB) beside calling the worker in process; admission of a TPM-attested worker (swtpm) beside minting its SVID"
	"$GO" test -trimpath -count=1 -run '^$' -bench RemoteInvoke -benchtime "$MICRO_BENCHTIME" ./runtime/workerapi/ || micro_status=$?
	"$GO" test -trimpath -count=1 -run '^$' -bench AdmitTPM -benchtime 20x ./identity/nodeapi/ || micro_status=$?
	echo
fi

policy_status=0
if [ "$POLICY_BENCH" != 0 ]; then
	echo "== policy engine: policyd in process vs upstream OPA's REST API (the table is printed at the end)"
	# Optional figures, like the micro-benchmarks: a failure is reported, and
	# the invoke benchmarks still run.
	policy_run() {
		local opa=${OPA:-}
		if [ -z "$opa" ]; then
			# The tool directive in go.mod pins OPA; `go tool -n` builds it once,
			# caches the binary and prints its path. Without the directive, build
			# the same version from the module graph.
			opa=$("$GO" tool -n opa 2>"$WORK/opa-build.log") && [ -x "$opa" ] || {
				echo "   \`go tool -n opa\` failed ($(tail -n 1 "$WORK/opa-build.log")); building OPA with go build"
				opa=$WORK/opa
				"$GO" build -trimpath -o "$opa" github.com/open-policy-agent/opa || return
			}
		fi
		"$GO" build -trimpath -o "$WORK/policybench" ./bench/policybench || return
		# In the background, so that INT/TERM reach the trap at once.
		# shellcheck disable=SC2086 # POLICY_FLAGS is split on purpose
		"$WORK/policybench" -opa "$opa" -policies policies -work "$WORK" ${POLICY_FLAGS:-} >"$WORK/policy.txt" &
		BENCH_PID=$!
		wait "$BENCH_PID"
	}
	policy_run || policy_status=$?
	BENCH_PID=
	echo
fi

identity_status=0
if [ "$IDENTITY_BENCH" != 0 ]; then
	echo "== identity: Workload API FetchX509SVID first response vs a gRPC health check (the table is printed at the end)"
	# Optional figures, like the policy benchmark.
	identity_run() {
		"$GO" build -trimpath -o "$WORK/identitybench" ./bench/identitybench || return
		# In the background, so that INT/TERM reach the trap at once.
		# shellcheck disable=SC2086 # IDENTITY_FLAGS is split on purpose
		"$WORK/identitybench" -work "$WORK" ${IDENTITY_FLAGS:-} >"$WORK/identity.txt" &
		BENCH_PID=$!
		wait "$BENCH_PID"
	}
	identity_run || identity_status=$?
	BENCH_PID=
	echo
fi

tlcp_status=0
if [ "$TLCP_BENCH" != 0 ]; then
	echo "== TLCP: handshakes/s on one core and SM4-GCM bulk vs Go TLS 1.3 (the table is printed at the end)"
	# Optional figures, like the policy benchmark.
	tlcp_run() {
		"$GO" build -trimpath -o "$WORK/tlcpbench" ./bench/tlcpbench || return
		# In the background, so that INT/TERM reach the trap at once.
		# shellcheck disable=SC2086 # TLCP_FLAGS is split on purpose
		"$WORK/tlcpbench" ${TLCP_FLAGS:-} >"$WORK/tlcp.txt" &
		BENCH_PID=$!
		wait "$BENCH_PID"
	}
	tlcp_run || tlcp_status=$?
	BENCH_PID=
	echo
fi

egress_status=0
if [ "$EGRESS_BENCH" != 0 ]; then
	echo "== egress: connect() and a TLS handshake inside vs outside an enforced cgroup, and applying a revision (the table is printed at the end)"
	# Optional figures, like the policy benchmark.
	egress_run() {
		"$GO" build -trimpath -o "$WORK/egressbench" ./bench/egressbench || return
		# In the background, so that INT/TERM reach the trap at once.
		# shellcheck disable=SC2086 # EGRESS_FLAGS is split on purpose
		"$WORK/egressbench" ${EGRESS_FLAGS:-} >"$WORK/egress.txt" &
		BENCH_PID=$!
		wait "$BENCH_PID"
	}
	egress_run || egress_status=$?
	BENCH_PID=
	echo
fi

sandbox_status=0
if [ "$SANDBOX_BENCH" != 0 ]; then
	echo "== sandbox drivers: cold start, micro-VM boot breakdown, warm invoke and idle memory vs the process driver (the table is printed at the end)"
	# Optional figures, like the policy benchmark. It starts (and stops) its
	# own containerd; a driver the host cannot run is skipped with the reason.
	sandbox_run() {
		"$GO" build -trimpath -o "$WORK/sandboxbench" ./bench/sandboxbench || return
		# In the background, so that INT/TERM reach the trap at once.
		# shellcheck disable=SC2086 # SANDBOX_FLAGS is split on purpose
		"$WORK/sandboxbench" -go "$GO" ${SANDBOX_FLAGS:-} >"$WORK/sandbox.txt" &
		BENCH_PID=$!
		wait "$BENCH_PID"
	}
	sandbox_run || sandbox_status=$?
	BENCH_PID=
	echo
fi

"$GO" build -trimpath -o "$WORK/invokebench" ./bench/invokebench

echo "== starting zfaas up (data in $WORK/data, log in $WORK/up.log)"
# shellcheck disable=SC2086 # UP_FLAGS is split on purpose
"$ZFAAS" up --data-dir "$WORK/data" --listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 --health-listen off \
	--client-config "$WORK/client/config.yaml" --log-level warn ${UP_FLAGS:-} >"$WORK/up.out" 2>"$WORK/up.log" &
UP_PID=$!
GW=
for _ in $(seq 1 300); do
	GW=$(sed -n 's|^zfaas is up: gateway \(https://127\.0\.0\.1:[0-9]*\) .*|\1|p' "$WORK/up.out")
	[ -n "$GW" ] && break
	kill -0 "$UP_PID" 2>/dev/null || die "zfaas up exited before it was ready"
	sleep 0.1
done
[ -n "$GW" ] || die "zfaas up was not ready within 30s"
echo "   gateway $GW"

# In the background, so that INT/TERM reach the trap at once.
# shellcheck disable=SC2086 # BENCH_FLAGS is split on purpose
"$WORK/invokebench" -gateway "$GW" -client-config "$WORK/client/config.yaml" -zfaas "$ZFAAS" -examples "$EXAMPLES" -work "$WORK" ${BENCH_FLAGS:-} &
BENCH_PID=$!
wait "$BENCH_PID"
BENCH_PID=
[ ! -s "$WORK/policy.txt" ] || cat "$WORK/policy.txt"
[ ! -s "$WORK/identity.txt" ] || cat "$WORK/identity.txt"
[ ! -s "$WORK/egress.txt" ] || cat "$WORK/egress.txt"
[ ! -s "$WORK/tlcp.txt" ] || cat "$WORK/tlcp.txt"
[ ! -s "$WORK/sandbox.txt" ] || cat "$WORK/sandbox.txt"
echo "(bench took $((SECONDS - t0)) s)"
[ "$micro_status" = 0 ] || die "the Go micro-benchmarks failed (see their output above)"
[ "$policy_status" = 0 ] || die "the policy benchmark failed (see its output above)"
[ "$identity_status" = 0 ] || die "the identity benchmark failed (see its output above)"
[ "$egress_status" = 0 ] || die "the egress benchmark failed (see its output above)"
[ "$tlcp_status" = 0 ] || die "the TLCP benchmark failed (see its output above)"
[ "$sandbox_status" = 0 ] || die "the sandbox driver benchmark failed (see its output above)"

# Audit log (bench/auditbench): append throughput beside plain JetStream
# publishes, AppendSync latency, and the cost of an Append per request on a
# loopback HTTP handler, in its own embedded store. It runs last (the
# platform above idles meanwhile; the trap still stops it). Set
# AUDIT_BENCH=0 to skip it, AUDIT_FLAGS for its flags (e.g. "-suite gm").
if [ "${AUDIT_BENCH:-1}" != 0 ]; then
	echo
	echo "== audit log: Append vs plain JetStream publish; request path with and without an Append"
	"$GO" build -trimpath -o "$WORK/auditbench" ./bench/auditbench
	# shellcheck disable=SC2086 # AUDIT_FLAGS is split on purpose
	"$WORK/auditbench" -work "$WORK" ${AUDIT_FLAGS:-} &
	BENCH_PID=$!
	wait "$BENCH_PID"
	BENCH_PID=
fi
