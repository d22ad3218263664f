#!/usr/bin/env bash
# A flame graph of the Herald server during one fan-out run
# (`make flamegraph`): the server is built with frame pointers and line
# tables, `perf` samples it (99 Hz per CPU, call graphs) from its start to
# its exit, and inferno draws the SVG. Needs perf (Debian: linux-perf) and
# inferno (`cargo install inferno`).
#
#   bench/scripts/flamegraph.sh OUT.svg [HERALD_BINARY] [SUBSCRIBERS]
#
# LABEL names the build in the title (default: git describe of this
# checkout); FOLDED=path keeps the folded stacks.
set -euo pipefail

out=${1:?usage: flamegraph.sh OUT.svg [HERALD_BINARY] [SUBSCRIBERS]}
herald=${2:-target/profiling/release/herald}
subscribers=${3:-1000}
for tool in perf inferno-collapse-perf inferno-flamegraph; do
  command -v "$tool" >/dev/null || { echo "flamegraph.sh: $tool not found" >&2; exit 1; }
done
[ -x "$herald" ] || { echo "flamegraph.sh: $herald not found (make flamegraph builds it)" >&2; exit 1; }
[ -x target/release/herald-bench ] || { echo "flamegraph.sh: build herald-bench first" >&2; exit 1; }

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
./target/release/herald-bench --herald "$herald" fanout --target herald-ws-json \
  --subscribers "$subscribers" --seconds 5 >"$scratch/record.json" &
bench=$!
pid=
for _ in $(seq 200); do
  pid=$(pgrep -n -f "^$herald serve" || true)
  [ -n "$pid" ] && break
  sleep 0.05
done
[ -n "$pid" ] || { echo "flamegraph.sh: the server did not start" >&2; exit 1; }
perf record -F 99 -g -p "$pid" -o "$scratch/perf.data" 2>"$scratch/perf.log" &
perf_pid=$!
wait "$bench"
wait "$perf_pid" || true
perf script -i "$scratch/perf.data" 2>/dev/null | inferno-collapse-perf >"$scratch/folded"
# FOLDED=path keeps the folded stacks (for inferno-diff-folded, or grep).
[ -z "${FOLDED:-}" ] || cp "$scratch/folded" "$FOLDED"
inferno-flamegraph <"$scratch/folded" --title "herald serve: fan-out to $subscribers WebSocket subscribers (${LABEL:-$(git describe --always --dirty)})" \
    --width 1400 >"$out"
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("deliveries/s %.0f, server CPU %ss, delivered %d of %d" % (r["deliveries_per_second"], r.get("server_cpu_seconds"), r["delivered"], r["expected"]))' "$scratch/record.json"
echo "wrote $out"
