#!/usr/bin/env bash
# make bench: a perfdhcp rate sweep against hyperdhcpd in a network namespace
# test bed, printing the highest 4-way rate with under 1% lost exchanges and
# p50/p99 latency of each exchange. Runs as root; traffic stays on a veth
# pair between two namespaces this script creates and removes.
#
# Knobs (environment): RATES, DURATION (seconds per step), CLIENTS (random
# MACs), OUT (results file).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
RATES=${RATES:-"500 1000 2000 3000 4000 5000 6000 8000"}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-20000}
OUT=${OUT:-$repo/bin/bench/dhcp.txt}

if [[ $EUID -ne 0 ]]; then
	echo "bench: needs root for network namespaces" >&2
	exit 1
fi
if ! command -v perfdhcp >/dev/null; then
	echo "bench: installing perfdhcp (kea-admin)" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kea-admin >/dev/null ||
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kea-admin >/dev/null; }
fi

# Leases go to a disk-backed directory, as they would in production.
work=$(mktemp -d -p /var/tmp hyperdhcp-bench.XXXXXX)
server_ns=hdbench$$s
client_ns=hdbench$$c
server_pid=
cleanup() {
	[[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
	ip netns del "$server_ns" 2>/dev/null || true
	ip netns del "$client_ns" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

echo "bench: building hyperdhcpd" >&2
(cd "$repo/dhcpd" && go build -o "$work/hyperdhcpd" ./cmd/hyperdhcpd)

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

cat >"$work/hyperdhcpd.yaml" <<CONFIG
server:
  networkAttachment: {name: bench, interface: srv0}
  serverIP: 10.77.0.2/16
  pools: [{start: 10.77.1.0, end: 10.77.255.254}]
  router: 10.77.0.1
  dns: [10.77.0.53]
  leaseTime: 1h
leaseDatabase: $work/leases.db
metricsAddress: "0"
logLevel: warn
CONFIG

# A fixed list of random MACs: perfdhcp's default sequential MACs would flatter
# servers that hash them.
awk -v n="$CLIENTS" 'BEGIN { srand(1); for (i = 0; i < n; i++) printf "02:%02x:%02x:%02x:%02x:%02x\n", int(rand()*256), int(rand()*256), int(rand()*256), int(rand()*256), int(rand()*256) }' |
	sort -u >"$work/macs.txt"

ip netns exec "$server_ns" "$work/hyperdhcpd" serve --config "$work/hyperdhcpd.yaml" 2>"$work/server.log" &
server_pid=$!
sleep 1
kill -0 "$server_pid" || { cat "$work/server.log" >&2; exit 1; }

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$server_pid/stat"; }
tick_ms=$((1000 / $(getconf CLK_TCK)))

# percentile FILE P: the P-th percentile of the numbers in FILE.
percentile() { sort -n "$1" | awk -v p="$2" '{ v[NR] = $1 } END { if (NR == 0) { print "-"; exit } i = int(NR * p / 100 + 0.999); if (i < 1) i = 1; printf "%.3f", v[i] }'; }

mkdir -p "$(dirname "$OUT")"
{
	echo "hyperdhcpd perfdhcp sweep: $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, $CLIENTS clients, ${DURATION}s per step, /16 pool"
	printf '%-8s %-10s %-8s %-9s %-9s %-9s %-9s %-10s\n' rate achieved lost% DO_p50ms DO_p99ms RA_p50ms RA_p99ms cpu_us/ex
} | tee "$OUT"

best=0
for rate in $RATES; do
	before=$(cpu_ticks)
	ip netns exec "$client_ns" perfdhcp -4 -r "$rate" -p "$DURATION" -x t -M "$work/macs.txt" 10.77.0.2 >"$work/perfdhcp.out" 2>&1 || true
	after=$(cpu_ticks)
	awk '/Timestamps for packets: DISCOVER-OFFER/ { s = "do" } /Timestamps for packets: REQUEST-ACK/ { s = "ra" }
		/^sent \/ received:/ && s { print ($6 - $4) * 1000 > (dir "/" s ".ms") }' dir="$work" "$work/perfdhcp.out"
	touch "$work/do.ms" "$work/ra.ms"
	read -r achieved lost exchanges < <(awk '
		/^Rate:/ { achieved = $2 }
		/Statistics for: DISCOVER-OFFER/ { s = "do" } /Statistics for: REQUEST-ACK/ { s = "ra" }
		/^sent packets:/ { sent[s] = $3 } /^received packets:/ { recv[s] = $3 }
		END { lost = sent["do"] ? 100 * (1 - recv["ra"] / sent["do"]) : 100; printf "%.1f %.2f %d\n", achieved, lost, recv["ra"] }' "$work/perfdhcp.out")
	cpu_us=$(awk -v t=$(((after - before) * tick_ms)) -v n="$exchanges" 'BEGIN { if (n > 0) printf "%.0f", t * 1000 / n; else print "-" }')
	printf '%-8s %-10s %-8s %-9s %-9s %-9s %-9s %-10s\n' "$rate" "$achieved" "$lost" \
		"$(percentile "$work/do.ms" 50)" "$(percentile "$work/do.ms" 99)" \
		"$(percentile "$work/ra.ms" 50)" "$(percentile "$work/ra.ms" 99)" "$cpu_us" | tee -a "$OUT"
	rm -f "$work/do.ms" "$work/ra.ms"
	if awk -v l="$lost" 'BEGIN { exit !(l < 1) }'; then
		best=$rate
	fi
done
echo "highest rate with under 1% lost exchanges: $best 4-way exchanges/s" | tee -a "$OUT"
echo "results: $OUT" >&2
