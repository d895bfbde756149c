# zfaas — run `make help` for the targets.
SHELL := /bin/bash
GO ?= go
BIN := bin
EXAMPLES_OUT := build/examples
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
PREFIX ?= /usr/local
FUZZTIME ?= 15s
TLCP_FUZZTIME ?= 8s
export CGO_ENABLED ?= 0

.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: deps
deps: ## Install what the build and tests need (Debian packages, Go modules) when missing
	@missing=""; \
	for p in python3:/usr/bin/python3 nodejs:/usr/bin/node swtpm:/usr/bin/swtpm swtpm-tools:/usr/bin/swtpm_setup containerd:/usr/bin/containerd runc:/usr/sbin/runc qemu-system-x86:/usr/bin/qemu-system-x86_64; do \
	  pkg=$${p%%:*}; path=$${p#*:}; [ -x "$$path" ] || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi; \
	fi
	$(GO) mod download

.PHONY: build
build: ## Build bin/zfaas and the micro-VM guest agent bin/zfaas-agent
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/zfaas ./cmd/zfaas
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(BIN)/zfaas-agent ./runtime/guestagent/cmd/zfaas-agent

.PHONY: examples
examples: ## Build the example functions into build/examples
	@rm -rf $(EXAMPLES_OUT) && mkdir -p $(EXAMPLES_OUT)
	@for d in examples/*/; do \
	  name=$$(basename $$d); [ -f $$d/zfaas.yaml ] || continue; \
	  out=$(EXAMPLES_OUT)/$$name; mkdir -p $$out; \
	  if ls $$d/*.go >/dev/null 2>&1; then \
	    $(GO) build -trimpath -ldflags '-s -w' -o $$out/bootstrap ./$$d || exit 1; \
	    cp $$d/zfaas.yaml $$out/; \
	  else \
	    cp -r $$d/. $$out/; rm -f $$out/README.md; \
	  fi; \
	done
	@echo "examples built in $(EXAMPLES_OUT)"

.PHONY: install
install: build ## Link bin/zfaas into $(PREFIX)/bin so `zfaas` is on PATH (default PREFIX=/usr/local)
	@mkdir -p $(PREFIX)/bin && ln -sf $(CURDIR)/$(BIN)/zfaas $(PREFIX)/bin/zfaas && echo "linked $(PREFIX)/bin/zfaas -> $(CURDIR)/$(BIN)/zfaas"

.PHONY: run
run: deps build examples ## Start the all-in-one platform and deploy the examples (links zfaas onto PATH)
	@if [ -w $(PREFIX)/bin ]; then $(MAKE) --no-print-directory install; else echo "note: $(PREFIX)/bin not writable; use $(CURDIR)/$(BIN)/zfaas"; fi
	$(BIN)/zfaas up --deploy-examples $(EXAMPLES_OUT)

.PHONY: demo
demo: build examples ## Start the platform in a temp dir, invoke every example, stop
	./scripts/demo.sh

.PHONY: test
test: deps lint policy-test ## Run every test (installs what is missing first)
	$(GO) test -count=1 -timeout 20m ./...
	@echo "fuzzing the package parser for a bounded time (corpus in runtime/archive/testdata/fuzz):"
	$(GO) test -run '^$$' -fuzz FuzzInspect -fuzztime $(FUZZTIME) ./runtime/archive/
	@echo "fuzzing the TLCP record layer and handshake parsers for a bounded time (corpus in crypto/tlcp/testdata/fuzz):"
	$(GO) test -run '^$$' -fuzz '^FuzzRecordLayer$$' -fuzztime $(TLCP_FUZZTIME) ./crypto/tlcp/
	$(GO) test -run '^$$' -fuzz '^FuzzHandshakeMessages$$' -fuzztime $(TLCP_FUZZTIME) ./crypto/tlcp/
	$(GO) test -run '^$$' -fuzz '^FuzzRecordOpen$$' -fuzztime $(TLCP_FUZZTIME) ./crypto/tlcp/
	$(GO) test -run '^$$' -fuzz '^FuzzClientHandshake$$' -fuzztime $(TLCP_FUZZTIME) ./crypto/tlcp/
	@echo "race detector on the concurrent packages:"
	CGO_ENABLED=1 $(GO) test -race -short -count=1 -timeout 20m ./runtime/pool/ ./runtime/lambdaapi/ ./runtime/worker/ ./gateway/... ./policyd/... ./store/ ./audit/ ./crypto/tlcp/ ./crypto/dualstack/

.PHONY: policy-test
policy-test: ## Check and test the Rego repo with upstream OPA (opa check --strict, opa test)
	$(GO) tool opa check --strict policies/
	$(GO) tool opa test policies/

.PHONY: test-race
test-race: deps ## Run every test with the race detector
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 30m ./...

.PHONY: bench
bench: deps build examples ## Run benchmarks; every figure is printed beside its baseline
	./bench/run.sh

.PHONY: lint
lint: ## gofmt, go vet and staticcheck (config: staticcheck.conf)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

.PHONY: generate
generate: ## Regenerate protobuf stubs and the eBPF objects (needs protoc, clang, llvm, libbpf-dev)
	@command -v protoc >/dev/null || { echo "protoc missing: apt-get install protobuf-compiler"; exit 1; }
	@command -v clang >/dev/null && test -f /usr/include/bpf/bpf_helpers.h || { echo "clang or libbpf headers missing: apt-get install clang llvm libbpf-dev"; exit 1; }
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc
	$(GO) generate ./api/...
	$(GO) generate ./bpf/

.PHONY: generate-check
generate-check: generate ## Fail when generated code differs from what is committed
	@git diff --exit-code -- api/ bpf/ || { echo "generated code is stale: run make generate and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- api/ bpf/)" || { echo "untracked generated files:"; git status --porcelain -- api/ bpf/; exit 1; }

.PHONY: clean
clean: ## Remove build outputs
	rm -rf $(BIN) build

.PHONY: vmkernel
vmkernel: ## Fetch Debian's kernel with apt and extract vmlinux + virtio modules for the micro-VM sandbox (VMKERNEL_DIR, default /var/cache/zfaas/vmkernel)
	./scripts/vmkernel.sh $(or $(VMKERNEL_DIR),/var/cache/zfaas/vmkernel)
