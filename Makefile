# Herald developer commands. `make test` is what CI runs after lint.

CARGO ?= cargo

.PHONY: test lint fmt bench bench-core bench-e2e bench-medians doc clean

## Run every test in the workspace (unit, integration, property, doc tests).
test:
	$(CARGO) test --workspace --all-targets
	$(CARGO) test --workspace --doc

## Formatting and clippy, as CI checks them.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Criterion benches of the broker core (figures go to docs/benchmarks.md).
bench-core:
	$(CARGO) bench -p herald-broker --bench fanout
	$(CARGO) bench -p herald-broker --bench router

## End-to-end: the release server and the load generator, as docs/benchmarks.md quotes them.
bench-e2e:
	$(CARGO) build --release -p herald -p herald-bench
	./target/release/herald-bench fanout --subscribers 1000 --rate 500 --seconds 10
	./target/release/herald-bench fanout --subscribers 1000 --rate 1000 --seconds 10
	./target/release/herald-bench fanout --subscribers 1000 --rate 2000 --seconds 10
	./target/release/herald-bench idle --connections 10000

bench: bench-core bench-medians bench-e2e

doc:
	$(CARGO) doc --workspace --no-deps

clean:
	$(CARGO) clean

## Print the median of every criterion benchmark from the last run, in ns.
bench-medians:
	@find target/criterion -path '*/new/estimates.json' | sort | while read -r f; do \
	  name=$${f#target/criterion/}; name=$${name%/new/estimates.json}; \
	  python3 -c 'import json,sys; print("%-60s %12.1f" % (sys.argv[2], json.load(open(sys.argv[1]))["median"]["point_estimate"]))' "$$f" "$$name"; \
	done
