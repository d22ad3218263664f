# Herald developer commands. `make test` is what CI runs after lint.

CARGO ?= cargo

.PHONY: test test-clients client-deps test-nats-py lint fmt fuzz browser-deps bench bench-peers bench-core bench-e2e bench-smoke bench-medians bench-abuse bench-auth bench-batch bench-nats bench-publish bench-cluster bench-quic bench-latency flamegraph doc clean

## Run every test in the workspace (unit, integration, property, doc tests).
test:
	$(CARGO) test --workspace --all-targets
	$(CARGO) test --workspace --doc
	$(MAKE) test-nats-py
	$(MAKE) test-clients

## The JavaScript clients (clients/): the SDK's and the hooks' unit tests,
## then the browser tests (clients/tests/e2e.mjs): the Next.js chat example
## in Chromium against the real binary, killed and restarted mid-chat, on
## every transport, and with WebSocket blocked.
test-clients: client-deps browser-deps
	cd clients && npm test
	$(CARGO) build --bin herald
	node clients/tests/e2e.mjs target/debug/herald

## The clients' npm dependencies (TypeScript, React, Next.js), from the
## lockfile, installed if missing.
client-deps:
	@if [ -d clients/node_modules/next ] && [ -d clients/node_modules/typescript ]; then \
	  echo "client dependencies present"; \
	else \
	  cd clients && npm ci --no-audit --no-fund --loglevel=error; \
	fi

## The NATS listener driven by nats-py (from PyPI, into a virtualenv under
## target/): the Python client's basics against the real binary.
NATS_PY_VENV ?= target/nats-py-venv
test-nats-py:
	@[ -x $(NATS_PY_VENV)/bin/python ] || python3 -m venv $(NATS_PY_VENV)
	@$(NATS_PY_VENV)/bin/python -c "import nats" 2>/dev/null || $(NATS_PY_VENV)/bin/pip install -q nats-py
	$(CARGO) build --bin herald
	$(NATS_PY_VENV)/bin/python tests/nats_py/smoke.py target/debug/herald

## The fuzz targets (every parser that sees network bytes) run far longer
## than in `make test` (256 cases each): FUZZ_CASES cases per property,
## optimised. A failure's input is saved next to its test as a
## *.proptest-regressions seed and replayed first from then on.
FUZZ_CASES ?= 200000
fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --release -p herald-broker -p herald-gateway -p herald-http -p herald-nats --test fuzz

## Formatting and clippy, as CI checks them.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## What the browser tests need, installed if missing: Debian's Chromium and
## playwright-core from npm (it drives the installed browser, downloads none).
browser-deps:
	@if [ -x /usr/bin/chromium ]; then \
	  echo "chromium present"; \
	else \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	fi
	@if [ -d tests/browser/node_modules/playwright-core ]; then \
	  echo "playwright-core present"; \
	else \
	  cd tests/browser && npm ci --no-audit --no-fund --loglevel=error; \
	fi

## The standard benchmark set (about 7 minutes on two cores): installs the
## peers it needs, runs the core's criterion benches and the end-to-end
## suite, and rewrites the generated part of docs/benchmarks.md.
bench: bench-peers bench-core bench-e2e

## The peers, installed if missing: nats-server and Pushpin from Debian's
## packages, Socket.IO 4 from npm (Socket.IO and Pushpin's origin app need
## Node.js; without it they are skipped with a note).
bench-peers:
	@missing=; \
	command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || missing="$$missing nats-server"; \
	command -v pushpin >/dev/null 2>&1 || missing="$$missing pushpin"; \
	if [ -z "$$missing" ]; then \
	  echo "nats-server and pushpin present"; \
	else \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@if ! command -v node >/dev/null 2>&1; then \
	  echo "node not found: the Socket.IO and Pushpin peers are skipped"; \
	elif [ -d bench/peers/socketio/node_modules/socket.io ]; then \
	  echo "socket.io present"; \
	else \
	  cd bench/peers/socketio && npm ci --no-audit --no-fund --loglevel=error; \
	fi

## Criterion benches of the broker core (shortened measurement).
bench-core:
	$(CARGO) bench -p herald-broker --bench fanout -- --warm-up-time 1 --measurement-time 3
	$(CARGO) bench -p herald-broker --bench router -- --warm-up-time 1 --measurement-time 3

BENCH_ENVIRONMENT = Machine: $(shell nproc) vCPU $(shell grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), Linux $(shell uname -r); $(shell rustc --version | cut -d' ' -f1-2); $(shell (nats-server --version 2>/dev/null || /usr/sbin/nats-server --version 2>/dev/null) | head -1); node $(shell node --version 2>/dev/null), socket.io $(shell node -p "require('./bench/peers/socketio/node_modules/socket.io/package.json').version" 2>/dev/null); $(shell pushpin --version 2>/dev/null | head -1); herald $(shell git describe --always --dirty 2>/dev/null); run of $(shell date -u +%Y-%m-%d). Command: make bench.

## End to end: release server, peers and the load generator.
bench-e2e:
	$(CARGO) build --release -p herald -p herald-bench
	./target/release/herald-bench suite --environment "$(BENCH_ENVIRONMENT)"

## The seconds-long smoke run the test suite also makes (writes to /tmp).
bench-smoke:
	$(CARGO) build --release -p herald -p herald-bench
	./target/release/herald-bench suite --smoke --out /tmp/herald-bench-smoke --page /tmp/herald-bench-smoke/benchmarks.md

## Print the median of every criterion benchmark from the last run, in ns.
bench-medians:
	@find target/criterion -path '*/new/estimates.json' | sort | while read -r f; do \
	  name=$${f#target/criterion/}; name=$${name%/new/estimates.json}; \
	  python3 -c 'import json,sys; print("%-60s %12.1f" % (sys.argv[2], json.load(open(sys.argv[1]))["median"]["point_estimate"]))' "$$f" "$$name"; \
	done

doc:
	$(CARGO) doc --workspace --no-deps

clean:
	$(CARGO) clean

## Every attack a client without a key can mount (about a minute): 1 000
## connections each for 5 s against the release binary with its default
## limits, while a normal subscriber keeps receiving. Prints a line and a
## JSON record per attack; docs/benchmarks.md quotes one run.
bench-abuse:
	$(CARGO) build --release -p herald -p herald-bench
	./target/release/herald-bench abuse --connections 1000 --seconds 5

## The same async-nats workload against nats-server and Herald's NATS
## listener, three rounds alternating which goes first: JSON lines, then
## the table of medians and ratios docs/benchmarks.md quotes.
bench-nats: bench-peers
	$(CARGO) build --release -p herald -p herald-bench
	./target/release/herald-bench nats

## The ways a backend publishes (HTTP one message per request on 8
## keep-alive connections, HTTP batches of 100, pipelined WebSocket `pub`,
## Herald's NATS listener) and nats-server, no subscriber, three rounds
## alternating the order: messages/s and server CPU per message.
bench-publish: bench-peers
	$(CARGO) build --release -p herald -p herald-bench
	./target/release/herald-bench publish

## What cluster mode costs: one Herald node vs two bridged through
## nats-server with JetStream (subscribers split, or all on the other node),
## three rounds alternating the order: JSON lines, then the table of medians
## and ratios docs/benchmarks.md quotes.
bench-cluster: bench-peers
	$(CARGO) build --release -p herald -p herald-bench
	./target/release/herald-bench cluster

## Flame graphs of the server during a fan-out to 1 000 WebSocket
## subscribers: the server built with frame pointers and line tables into
## target/profiling, sampled by perf (Debian: linux-perf), drawn by inferno
## (`cargo install inferno`). Writes FLAME (an SVG).
FLAME ?= docs/benchmarks/flame-fanout-1000.svg
flamegraph:
	$(CARGO) build --release -p herald-bench
	CARGO_TARGET_DIR=target/profiling CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
	  RUSTFLAGS="-C force-frame-pointers=yes" $(CARGO) build --release -p herald
	bench/scripts/flamegraph.sh $(FLAME) target/profiling/release/herald 1000

## WebSocket (plain and over TLS) vs WebTransport: the same fan-out to
## 1 000 subscribers on each (publisher on WebSocket), three rounds
## alternating the order: JSON lines, then the tables of medians and ratios
## docs/benchmarks.md quotes.
bench-quic:
	$(CARGO) build --release -p herald -p herald-bench
	./target/release/herald-bench quic

## Latency at half of nats-server's maximum rate: nats-server's fan-out to
## 1 000 subscribers at full speed, then nats-server (TCP and WebSocket)
## and Herald's WebSocket gateway at half that rate, with Herald's
## defaults; three rounds, the order alternating.
bench-latency:
	$(CARGO) build --release -p herald -p herald-bench
	./target/release/herald-bench latency

## Several events per WebSocket frame (herald.json.batch) vs one
## (herald.json), with nats-server's WebSocket listener in the same
## minutes: fan-out to 1 000 subscribers, three rounds, the order rotating.
## One JSON line per run.
bench-batch:
	$(CARGO) build --release -p herald -p herald-bench
	for order in "herald-ws-json herald-ws-json-single nats-ws" "herald-ws-json-single nats-ws herald-ws-json" \
	             "nats-ws herald-ws-json herald-ws-json-single"; do \
	  for target in $$order; do \
	    ./target/release/herald-bench fanout --target $$target --subscribers 1000 --seconds 3 || exit 1; \
	  done; \
	done

## Fan-out to 1 000 subscribers each holding a user token vs anonymous
## ones, six runs each, which goes first alternating: one JSON line per run.
bench-auth:
	$(CARGO) build --release -p herald -p herald-bench
	for order in "herald-ws-json herald-ws-json-token" "herald-ws-json-token herald-ws-json" \
	             "herald-ws-json herald-ws-json-token" "herald-ws-json-token herald-ws-json" \
	             "herald-ws-json herald-ws-json-token" "herald-ws-json-token herald-ws-json"; do \
	  for target in $$order; do \
	    ./target/release/herald-bench fanout --target $$target --subscribers 1000 --seconds 3 || exit 1; \
	  done; \
	done
