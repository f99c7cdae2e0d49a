#!/usr/bin/env bash
# make bench: hyperdhcpd side by side with its peers (ISC Kea memfile,
# dnsmasq, stock CoreDHCP with its range plugin) on one test bed: a server
# namespace and a load namespace joined by a veth pair, the same /16 pool,
# the same fixed list of random client MACs and the same perfdhcp seed,
# leases on the same disk. For each server it sweeps perfdhcp's 4-way (DORA)
# rate and records the achieved rate, lost exchanges, DISCOVER->OFFER and
# REQUEST->ACK latency percentiles, server CPU per exchange and peak RSS;
# then a restart of hyperdhcpd on 65,000 leases (time to first ACK, RSS)
# and the Go benchmarks. It prints one report, writes it with the raw data
# to a results folder and draws a chart (PNG and SVG) with gnuplot.
#
# Runs as root. Traffic stays on the veth pair between the two namespaces
# this script creates and removes; nothing is installed as a service (Kea is
# unpacked from its Debian package into a cache, never started by dpkg).
#
# Knobs (environment): SERVERS (of hyperdhcpd, hyperdhcpd-noprobe, kea,
# dnsmasq, coredhcp), RATES (ascending), DURATION (seconds per
# step), CLIENTS (random MACs), RESULTS (folder), GO_BENCHMARKS (0 to skip),
# RESTART_LEASES (0 to skip the restart measurement), PROFILE (1: a CPU
# profile of hyperdhcpd's sweep in the results folder).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SERVERS=${SERVERS:-"hyperdhcpd hyperdhcpd-noprobe kea dnsmasq coredhcp"}
RATES=${RATES:-"100 150 200 250 300 500 1000 2000 3000 4000 5000 6000 7000"}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-20000}
RESTART_LEASES=${RESTART_LEASES:-65000}
GO_BENCHMARKS=${GO_BENCHMARKS:-1}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS=${RESULTS:-$repo/bin/bench/$stamp}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/hyperdhcp/bench
# The CoreDHCP commit hyperdhcpd builds on, so the stock server is the same code.
COREDHCP_VERSION=$(cd "$repo/dhcpd" && go list -m -f '{{.Version}}' github.com/coredhcp/coredhcp)
GOPACKET_VERSION=v1.1.19

log() { echo "bench: $*" >&2; }
# shellcheck source=hack/lib.sh
source "$repo/hack/lib.sh"

if [[ $EUID -ne 0 ]]; then
	log "needs root for network namespaces"
	exit 1
fi

# Kea's package would start a system service on the host: its binary is
# unpacked into the cache instead, and runs on kea-common's libraries.
kea_binary() {
	local dir=$cache/kea-dhcp4-server-$(dpkg-query -W -f '${Version}' kea-common)
	if [[ ! -x $dir/usr/sbin/kea-dhcp4 ]]; then
		log "unpacking kea-dhcp4-server into $dir"
		local tmp
		tmp=$(mktemp -d)
		(cd "$tmp" && apt-get download -qq "kea-dhcp4-server=$(dpkg-query -W -f '${Version}' kea-common)" >/dev/null)
		mkdir -p "$dir"
		dpkg-deb -x "$tmp"/kea-dhcp4-server_*.deb "$dir"
		rm -rf "$tmp"
	fi
	echo "$dir/usr/sbin/kea-dhcp4"
}

# Stock CoreDHCP from its own module, built in a throwaway module outside
# the repository and cached by version.
coredhcp_binary() {
	local bin=$cache/coredhcp-$COREDHCP_VERSION
	if [[ ! -x $bin ]]; then
		log "building stock CoreDHCP $COREDHCP_VERSION"
		local tmp
		tmp=$(mktemp -d)
		(
			cd "$tmp"
			export GOWORK=off GOFLAGS=-mod=mod
			go mod init bench/coredhcp >/dev/null 2>&1
			go get "github.com/coredhcp/coredhcp@$COREDHCP_VERSION" "github.com/google/gopacket@$GOPACKET_VERSION" >/dev/null 2>&1
			mkdir -p "$(dirname "$bin")"
			go build -o "$bin" github.com/coredhcp/coredhcp/cmds/coredhcp
		)
		rm -rf "$tmp"
	fi
	echo "$bin"
}

need=(kea-admin)
for s in $SERVERS; do
	case $s in
	hyperdhcpd | hyperdhcpd-noprobe | coredhcp) ;;
	kea) need+=(kea-common jq) ;;
	dnsmasq) need+=(dnsmasq-base) ;;
	*) log "unknown server $s (known: hyperdhcpd hyperdhcpd-noprobe kea dnsmasq coredhcp)"; exit 1 ;;
	esac
done
need+=(gnuplot-nox)
apt_install "${need[@]}"

# Leases go to a disk-backed directory, as they would in production.
work=$(mktemp -d -p /var/tmp hyperdhcp-bench.XXXXXX)
server_ns=hdbench$$s
client_ns=hdbench$$c
server_pid=
stop_server() {
	if [[ -n $server_pid ]]; then
		kill "$server_pid" 2>/dev/null || true
		wait "$server_pid" 2>/dev/null || true
		server_pid=
	fi
}
cleanup() {
	stop_server
	ip netns del "$server_ns" 2>/dev/null || true
	ip netns del "$client_ns" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

declare -A binary
for s in $SERVERS; do
	case $s in
	hyperdhcpd | hyperdhcpd-noprobe)
		if [[ ! -x $work/bin/hyperdhcpd ]]; then
			log "building hyperdhcpd"
			(cd "$repo/dhcpd" && go build -o "$work/bin/hyperdhcpd" ./cmd/hyperdhcpd)
		fi
		binary[$s]=$work/bin/hyperdhcpd
		;;
	kea) binary[$s]=$(kea_binary) ;;
	dnsmasq) binary[$s]=$(command -v dnsmasq) ;;
	coredhcp) binary[$s]=$(coredhcp_binary) ;;
	esac
done

ip netns add "$server_ns"
ip netns add "$client_ns"
for ns in "$server_ns" "$client_ns"; do
	ip -n "$ns" link set lo up
	ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
done
ip -n "$server_ns" link add srv0 type veth peer name load0 netns "$client_ns"
ip -n "$server_ns" addr add 10.77.0.2/16 dev srv0
ip -n "$server_ns" link set srv0 up
ip -n "$client_ns" addr add 10.77.0.250/16 dev load0
ip -n "$client_ns" link set load0 up

# A fixed list of random MACs: perfdhcp's default sequential MACs would
# flatter servers that hash them.
random_macs() {
	awk -v n="$1" -v seed="$2" 'BEGIN { srand(seed); for (i = 0; i < n; i++) printf "02:%02x:%02x:%02x:%02x:%02x\n", int(rand()*256), int(rand()*256), int(rand()*256), int(rand()*256), int(rand()*256) }' | sort -u
}
random_macs "$CLIENTS" 1 >"$work/macs.txt"

# start_server NAME: writes NAME's configuration (the same pool, router,
# DNS and one-hour leases for every server) and starts it in the server
# namespace with empty lease storage.
start_server() {
	local name=$1 dir=$work/$1
	rm -rf "$dir"
	mkdir -p "$dir"
	case $name in
	hyperdhcpd | hyperdhcpd-noprobe)
		# hyperdhcpd probes every address it offers a new client (ARP,
		# conflict detection, its default); hyperdhcpd-noprobe does not.
		local probing=true
		[[ $name != hyperdhcpd-noprobe ]] || probing=false
		cat >"$dir/hyperdhcpd.yaml" <<-CONFIG
			server:
			  networkAttachment: {name: bench, interface: srv0}
			  serverIP: 10.77.0.2/16
			  pools: [{start: 10.77.1.0, end: 10.77.255.254}]
			  router: 10.77.0.1
			  dns: [10.77.0.53]
			  leaseTime: 1h
			  conflictDetection: {enabled: $probing}
			leaseDatabase: $dir/leases.db
			metricsAddress: "0"
			logLevel: warn
		CONFIG
		# PROFILE=1: a Go CPU profile of the sweep, for `go tool pprof`.
		local profile=()
		[[ ${PROFILE:-0} != 1 ]] || profile=(--cpu-profile "$RESULTS/$name.cpu.pprof")
		ip netns exec "$server_ns" "${binary[$name]}" serve --config "$dir/hyperdhcpd.yaml" "${profile[@]}" 2>"$dir/server.log" &
		;;
	kea)
		jq -n --arg dir "$dir" '{Dhcp4: {
			"interfaces-config": {interfaces: ["srv0"], "dhcp-socket-type": "udp"},
			"lease-database": {type: "memfile", persist: true, name: ($dir + "/kea-leases4.csv"), "lfc-interval": 0},
			"valid-lifetime": 3600,
			subnet4: [{id: 1, subnet: "10.77.0.0/16", pools: [{pool: "10.77.1.0 - 10.77.255.254"}],
				"option-data": [{name: "routers", data: "10.77.0.1"}, {name: "domain-name-servers", data: "10.77.0.53"}]}],
			loggers: [{name: "kea-dhcp4", severity: "WARN", output_options: [{output: ($dir + "/server.log")}]}]}}' >"$dir/kea-dhcp4.json"
		KEA_PIDFILE_DIR=$dir KEA_LOCKFILE_DIR=$dir ip netns exec "$server_ns" "${binary[$name]}" -c "$dir/kea-dhcp4.json" >>"$dir/server.log" 2>&1 &
		;;
	dnsmasq)
		# dhcp-lease-max (default 1,000) would cap the pool; no-ping skips
		# the ICMP probe before each offer, which no other server here does.
		ip netns exec "$server_ns" "${binary[$name]}" --keep-in-foreground --conf-file=/dev/null --port=0 \
			--interface=srv0 --bind-interfaces --dhcp-authoritative --no-ping --dhcp-lease-max=70000 \
			--dhcp-range=10.77.1.0,10.77.255.254,255.255.0.0,1h \
			--dhcp-option=option:router,10.77.0.1 --dhcp-option=option:dns-server,10.77.0.53 \
			--dhcp-leasefile="$dir/dnsmasq.leases" --pid-file="$dir/dnsmasq.pid" --user=root --group=root \
			--log-facility="$dir/server.log" 2>>"$dir/server.log" &
		;;
	coredhcp)
		cat >"$dir/coredhcp.yaml" <<-CONFIG
			server4:
			  listen: ["%srv0"]
			  plugins:
			    - lease_time: 3600s
			    - server_id: 10.77.0.2
			    - dns: 10.77.0.53
			    - router: 10.77.0.1
			    - netmask: 255.255.0.0
			    - range: $dir/leases.sqlite3 10.77.1.0 10.77.255.254 3600s
		CONFIG
		ip netns exec "$server_ns" "${binary[$name]}" --conf "$dir/coredhcp.yaml" >"$dir/server.log" 2>&1 &
		;;
	esac
	server_pid=$!
	local i
	for ((i = 0; i < 100; i++)); do
		if ! kill -0 "$server_pid" 2>/dev/null; then
			log "$name exited at start:"
			cat "$dir/server.log" >&2
			exit 1
		fi
		ip netns exec "$server_ns" ss -Hlun 'sport = :67' | grep -q . && return 0
		sleep 0.1
	done
	log "$name did not bind port 67 in 10s"
	exit 1
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$server_pid/stat"; }
tick_us=$((1000000 / $(getconf CLK_TCK)))
peak_rss_mib() { awk '/^VmHWM:/ { printf "%.0f", $2 / 1024 }' "/proc/$server_pid/status"; }

# percentile FILE P: the P-th percentile of the numbers in FILE.
percentile() { sort -n "$1" | awk -v p="$2" '{ v[NR] = $1 } END { if (NR == 0) { print "-"; exit } i = int(NR * p / 100 + 0.999); if (i < 1) i = 1; printf "%.3f", v[i] }'; }

# step NAME RATE: one perfdhcp run against the running server; appends a
# row to RESULTS/NAME.tsv and prints it; fails when the step lost 1% or
# more of its exchanges or perfdhcp could not offer 95% of the rate.
step() {
	local name=$1 rate=$2 raw=$RESULTS/raw/$1-$2.txt before after achieved lost exchanges cpu_us
	before=$(cpu_ticks)
	# -W: a second after the last DISCOVER for the answers still on their
	# way (an OFFER held for a conflict-detection probe takes 200 ms), so
	# they are not counted as lost.
	ip netns exec "$client_ns" perfdhcp -4 -r "$rate" -p "$DURATION" -W 1000000 -s 1 -x t -M "$work/macs.txt" 10.77.0.2 >"$raw" 2>&1 || true
	after=$(cpu_ticks)
	awk '/Timestamps for packets: DISCOVER-OFFER/ { s = "do" } /Timestamps for packets: REQUEST-ACK/ { s = "ra" }
		/^sent \/ received:/ && s { print ($6 - $4) * 1000 > (dir "/" s ".ms") }' dir="$work" "$raw"
	touch "$work/do.ms" "$work/ra.ms"
	# achieved: completed 4-way exchanges per second of sending (perfdhcp's
	# own rate counts the -W wait too).
	read -r achieved lost exchanges < <(awk -v duration="$DURATION" '
		/Statistics for: DISCOVER-OFFER/ { s = "do" } /Statistics for: REQUEST-ACK/ { s = "ra" }
		/^sent packets:/ { sent[s] = $3 } /^received packets:/ { recv[s] = $3 }
		END { lost = sent["do"] ? 100 * (1 - recv["ra"] / sent["do"]) : 100; printf "%.1f %.2f %d\n", recv["ra"] / duration, lost, recv["ra"] }' "$raw")
	cpu_us=$(awk -v t=$(((after - before) * tick_us)) -v n="$exchanges" 'BEGIN { if (n > 0) printf "%.0f", t / n; else print "-" }')
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rate" "$achieved" "$lost" \
		"$(percentile "$work/do.ms" 50)" "$(percentile "$work/do.ms" 99)" \
		"$(percentile "$work/ra.ms" 50)" "$(percentile "$work/ra.ms" 99)" "$cpu_us" "$(peak_rss_mib)" | tee -a "$RESULTS/$name.tsv"
	rm -f "$work/do.ms" "$work/ra.ms"
	gzip -f "$raw"
	awk -v l="$lost" -v a="$achieved" -v r="$rate" 'BEGIN { exit !(l < 1 && a >= 0.95 * r) }'
}

mkdir -p "$RESULTS/raw"
header=$'server\trate\tachieved\tlost%\tDO_p50ms\tDO_p99ms\tRA_p50ms\tRA_p99ms\tcpu_us/ex\tpeakRSS_MiB'
{
	echo "DHCPv4 servers side by side: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r)"
	echo "perfdhcp $(perfdhcp -v 2>&1 | head -1) relaying 4-way exchanges over a veth pair, $(wc -l <"$work/macs.txt") random client MACs (seed 1), ${DURATION}s per step, /16 pool, leases in $work ($(df --output=fstype "$work" | tail -1))"
	echo "perfdhcp busy-polls about one core: on $(nproc) cores the load generator is part of the ceiling."
	echo
	echo "$header"
} | tee "$RESULTS/sweep.txt" >&2

for s in $SERVERS; do
	printf '%s\n' "$header" >"$RESULTS/$s.tsv"
	start_server "$s"
	failures=0
	for rate in $RATES; do
		if step "$s" "$rate" >>"$RESULTS/sweep.txt"; then
			failures=0
		else
			failures=$((failures + 1))
		fi
		tail -1 "$RESULTS/$s.tsv" >&2
		# Two failed steps in a row: the server is past its ceiling.
		((failures < 2)) || break
	done
	cp "$work/$s/server.log" "$RESULTS/raw/$s-server.log"
	stop_server
done

# The summary: each server's highest passing rate, latency and CPU at the
# highest rate every server passed and at its own, and ratios to hyperdhcpd.
awk -F'\t' -v servers="$SERVERS" -v results="$RESULTS" '
	function pass(l, a, r) { return l < 1 && a >= 0.95 * r }
	FNR == 1 { next }
	{
		s = $1; r = $2 + 0; row[s, r] = $0
		if (pass($4 + 0, $3 + 0, r)) { ok[s, r] = 1; if (r > best[s]) best[s] = r }
		rates[r] = 1
	}
	END {
		n = split(servers, list, " ")
		# The common rate: the highest rate that every server passed.
		common = 0
		for (r in rates) { all = 1; for (i = 1; i <= n; i++) if (!ok[list[i], r]) all = 0; if (all && r + 0 > common) common = r + 0 }
		h = "hyperdhcpd"
		if (common) split(row[h, common], hc, "\t")
		split(row[h, best[h]], hb, "\t")
		printf "%-11s %9s %6s %8s %-19s %-19s %-15s %-9s %-12s %8s\n", "server", "max 4-way", "vs hd", "achieved", "RA p50/p99 ms @" common "/s", "RA p50/p99 ms @max", "CPU us/ex @" common "/s", "vs hd", "CPU @max", "peak RSS"
		md = "| server | highest 4-way rate, <1% lost | ratio to hyperdhcpd | REQUEST->ACK p50 / p99 at " common "/s | at its own highest rate | CPU per exchange at " common "/s | ratio to hyperdhcpd | CPU per exchange at its highest rate | peak RSS |\n|---|---|---|---|---|---|---|---|---|\n"
		for (i = 1; i <= n; i++) {
			s = list[i]
			if (!best[s]) { printf "%-11s %9s\n", s, "none"; md = md "| " s " | none passed | | | | | | | |\n"; continue }
			split(row[s, best[s]], b, "\t")
			cl = "-"; cpu = "-"; cpur = "-"
			if (common) { split(row[s, common], c, "\t"); cl = c[7] " / " c[8]; cpu = c[9]; if (hc[9] > 0) cpur = sprintf("%.2fx", c[9] / hc[9]) }
			rr = best[h] ? sprintf("%.2fx", best[s] / best[h]) : "-"
			printf "%-11s %9d %6s %8s %-19s %-19s %-15s %-9s %-12s %4s MiB\n", s, best[s], rr, b[3], cl, b[7] " / " b[8], cpu, cpur, b[9], b[10]
			md = md sprintf("| %s | %d/s | %s | %s ms | %s ms | %s µs | %s | %s µs | %s MiB |\n", s, best[s], rr, cl, b[7] " / " b[8], cpu, cpur, b[9], b[10])
		}
		printf "%s", md > (results "/summary.md")
	}' $(for s in $SERVERS; do echo "$RESULTS/$s.tsv"; done) >"$RESULTS/summary.txt"

# The chart: achieved rate and REQUEST->ACK p99 against the offered rate.
gnuplot -e "dir='$RESULTS'; servers='$SERVERS'; title='$(head -1 "$RESULTS/sweep.txt" | cut -c1-120)'" "$repo/hack/bench/chart.gp"

# A restart of hyperdhcpd on a full /16: time to the first ACK and RSS.
restart=
if [[ $RESTART_LEASES -gt 0 && " $SERVERS " == *" hyperdhcpd "* ]]; then
	log "filling hyperdhcpd with about $RESTART_LEASES leases (the /16 holds 65,279)"
	# perfdhcp picks a random MAC from its list for each exchange: 2.5 picks
	# per address from a list twice the size hit about 1.4 distinct MACs each
	# (some exchanges are lost at this rate).
	random_macs $((2 * RESTART_LEASES)) 2 >"$work/fill-macs.txt"
	start_server hyperdhcpd
	ip netns exec "$client_ns" perfdhcp -4 -r 5000 -n $((RESTART_LEASES * 250 / 100)) -W 2000000 -s 2 -M "$work/fill-macs.txt" 10.77.0.2 >"$RESULTS/raw/restart-fill.txt" 2>&1 || true
	kill "$server_pid" && wait "$server_pid" 2>/dev/null || true
	server_pid=
	head -1 "$work/fill-macs.txt" >"$work/one-mac.txt"
	started=$(date +%s%N)
	ip netns exec "$server_ns" "${binary[hyperdhcpd]}" serve --config "$work/hyperdhcpd/hyperdhcpd.yaml" 2>>"$work/hyperdhcpd/server.log" &
	server_pid=$!
	until ip netns exec "$server_ns" ss -Hlun 'sport = :67' | grep -q .; do sleep 0.01; done
	bound=$(date +%s%N)
	# hyperdhcpd binds after loading its leases. The first ACK comes one
	# exchange after the attempt that got it: the attempt's start plus its
	# DISCOVER->OFFER and REQUEST->ACK delays (perfdhcp itself then waits out
	# its one-second period).
	exchange_ms=
	for ((tries = 0; tries < 30; tries++)); do
		attempt=$(date +%s%N)
		exchange_ms=$(ip netns exec "$client_ns" perfdhcp -4 -r 1 -p 1 -M "$work/one-mac.txt" 10.77.0.2 2>&1 |
			awk '/Statistics for: REQUEST-ACK/ { ra = 1 } /^received packets:/ { got[ra + 0] = $3 } /^avg delay:/ && $3 != "n/a" { ms[ra + 0] = $3 }
				END { if (got[0] > 0 && got[1] > 0) printf "%.3f", ms[0] + ms[1] }')
		[[ -z $exchange_ms ]] || break
	done
	if [[ -z $exchange_ms ]]; then
		log "hyperdhcpd acknowledged nothing in 30 tries after its restart"
		exit 1
	fi
	acked=$((attempt + 10#${exchange_ms/./} * 1000))
	leases=$("${binary[hyperdhcpd]}" leases list --lease-database "$work/hyperdhcpd/leases.db" | tail -n +2 | wc -l)
	restart=$(printf 'hyperdhcpd restart with %d leases in its database: port 67 bound after %.2f s, first ACK after %.2f s, RSS %s MiB' \
		"$leases" "$(((bound - started) / 1000000))e-3" "$(((acked - started) / 1000000))e-3" "$(awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' "/proc/$server_pid/status")")
	stop_server
fi

gobench=
if [[ $GO_BENCHMARKS == 1 ]]; then
	log "running the Go benchmarks"
	assets=$("$repo/hack/envtest.sh")
	gobench=$(
		cd "$repo/dhcpd" && KUBEBUILDER_ASSETS=$assets go test -run '^$' -bench . -benchmem ./internal/server ./plugins/leasedb ./plugins/kubevirt 2>&1 | grep -E '^(Benchmark|pkg:)'
		cd "$repo/operator" && KUBEBUILDER_ASSETS=$assets go test -run '^$' -bench . -benchtime 1x ./internal/controller 2>&1 | grep -E '^(Benchmark|pkg:)'
	)
	printf '%s\n' "$gobench" >"$RESULTS/go-benchmarks.txt"
fi

{
	head -3 "$RESULTS/sweep.txt"
	echo
	cat "$RESULTS/summary.txt"
	echo
	echo "A step passes with under 1% of its exchanges lost and at least 95% of the offered rate achieved;"
	echo "the sweep of a server stops after two failed steps. RA = REQUEST->ACK; CPU = the server's user+system time."
	[[ -z $restart ]] || { echo; echo "$restart"; }
	[[ -z $gobench ]] || { echo; echo "Go benchmarks (in process): DORA cost, 65,000-lease load, 10,000-VMI lookup and memory, 200-Server reconcile"; echo "$gobench"; }
	echo
	echo "results: $RESULTS (sweep.txt, <server>.tsv, summary.md, chart.png, chart.svg, raw/)"
} | tee "$RESULTS/report.txt"
ln -sfn "$RESULTS" "$(dirname "$RESULTS")/latest"
