# Every target creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
BENCH_ARGS ?=
ARGS ?=

.PHONY: demo run test bench bench-deps system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $@

# Debian packages the tests run for real: Prometheus (end-to-end scrape test),
# Alertmanager (end-to-end alert delivery test) and a JDK (the real-JVM signal test).
# Installed only when missing; needs root.
system-deps:
	@missing=""; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v prometheus-alertmanager >/dev/null || missing="$$missing prometheus-alertmanager"; \
	command -v javac >/dev/null || missing="$$missing openjdk-17-jdk-headless"; \
	command -v unshare >/dev/null || missing="$$missing util-linux"; \
	command -v setpriv >/dev/null || missing="$$missing util-linux"; \
	command -v ip >/dev/null || missing="$$missing iproute2"; \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

demo: $(STAMP)
	$(BIN)/python -m exporter.demo

run: $(STAMP)
	$(BIN)/storm-termination-exporter $(ARGS)

# pytest exits 5 when it collected no test: that is a failure here too.
test: $(STAMP) system-deps
	@$(BIN)/python -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; \
	exit $$status

# Debian packages the benchmark runs: process-exporter (the peer it is compared
# with), gcc (builds bench/holder.c) and procps (the kill command that stops workers).
# Installed only when missing; needs root.
bench-deps:
	@missing=""; \
	command -v prometheus-process-exporter >/dev/null || missing="$$missing prometheus-process-exporter"; \
	command -v gcc >/dev/null || missing="$$missing gcc libc6-dev"; \
	[ -x /usr/bin/kill ] || [ -x /bin/kill ] || missing="$$missing procps"; \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The side-by-side comparison of docs/benchmarks.md, about 15 minutes; needs root.
# BENCH_ARGS passes flags to bench/run.py, such as --quick or --sections=cost.
bench: $(STAMP) bench-deps
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
