# HyperDHCP: DHCP for KubeVirt VMs on Multus networks. `make help` lists the targets.

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c

LOCALBIN ?= $(CURDIR)/bin
# SQLite syncs its write-ahead log with fdatasync instead of fsync: the same
# durability (the data, and the size needed to read it back) without also
# writing the file's timestamps, one disk write and wait fewer per commit.
# Every build and test of hyperdhcpd goes through here, the release through
# .goreleaser.yaml, which sets the same.
export CGO_CFLAGS := -O2 -g -DHAVE_FDATASYNC=1
# Tools are built once per machine into a per-user cache that every clone
# (CI's fresh ones included) shares, like the envtest binaries.
TOOLS_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/hyperdhcp/tools
CONTROLLER_TOOLS_VERSION ?= v0.23.0
CONTROLLER_GEN ?= $(TOOLS_CACHE)/controller-gen-$(CONTROLLER_TOOLS_VERSION)
GORELEASER_VERSION ?= v2.15.1
GORELEASER ?= $(TOOLS_CACHE)/goreleaser-$(GORELEASER_VERSION)

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
DATE ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
# Images: the operator's, and the hyperdhcpd image it deploys by default.
IMG ?= ghcr.io/hyperdhcp/hyperdhcp-operator:$(VERSION)
HYPERDHCPD_IMG ?= ghcr.io/hyperdhcp/hyperdhcpd:$(VERSION)
KUBECTL ?= kubectl
# Extra kubectl flags for install/deploy, e.g. DEPLOY_FLAGS=--dry-run=server
DEPLOY_FLAGS ?=

DHCPD_VERSION_PKG := github.com/hyperdhcp/hyperdhcp/dhcpd/internal/version
OPERATOR_VERSION_PKG := github.com/hyperdhcp/hyperdhcp/operator/internal/version
DHCPD_LDFLAGS := -s -w -X $(DHCPD_VERSION_PKG).Version=$(VERSION) -X $(DHCPD_VERSION_PKG).Commit=$(COMMIT) -X $(DHCPD_VERSION_PKG).Date=$(DATE)
OPERATOR_LDFLAGS := -s -w -X $(OPERATOR_VERSION_PKG).Version=$(VERSION) -X $(OPERATOR_VERSION_PKG).Commit=$(COMMIT) \
	-X $(OPERATOR_VERSION_PKG).Date=$(DATE) -X $(OPERATOR_VERSION_PKG).HyperdhcpdImage=$(HYPERDHCPD_IMG)

# Every module of the workspace, for targets that run per module.
MODULES := apis apis/test operator dhcpd dhcpd/test/coredhcp hack/demo
GO_DIRS := apis operator dhcpd hack
# -race needs cgo; the race detector is worth its cost on these small suites.
GO_TEST_FLAGS ?= -race -count=1

.PHONY: all
all: generate manifests build

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage:\n  make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: generate
generate: $(CONTROLLER_GEN) ## Generate the API's DeepCopy methods.
	cd apis && $(CONTROLLER_GEN) object:headerFile=../hack/boilerplate.go.txt paths=./...

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## Generate the CRD (deploy/crd) and the operator's RBAC (deploy/rbac).
	cd apis && $(CONTROLLER_GEN) crd paths=./... output:crd:artifacts:config=../deploy/crd
	cd operator && $(CONTROLLER_GEN) rbac:roleName=hyperdhcp-operator paths=./... output:rbac:artifacts:config=../deploy/rbac

.PHONY: verify-generated
verify-generated: ## Fail if generated files are stale.
	hack/verify-generated.sh

.PHONY: fmt
fmt: ## Format all Go code.
	gofmt -w $(GO_DIRS)

.PHONY: verify-tidy
verify-tidy: ## Fail if any module's go.mod or go.sum is not tidy.
	@for m in $(MODULES); do (cd $$m && go mod tidy -diff) || { echo "go mod tidy needed in $$m"; exit 1; }; done

.PHONY: lint
lint: ## gofmt check and go vet across the workspace.
	@unformatted=$$(gofmt -l $(GO_DIRS)); if [[ -n $$unformatted ]]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	go vet work

.PHONY: envtest
envtest: ## Build the envtest control plane (once per machine) and print its directory for KUBEBUILDER_ASSETS.
	@hack/envtest.sh

.PHONY: test
test: verify-generated verify-tidy lint verify-static images release-check bench-smoke ## Everything CI checks (as root): generated files, tidy modules, lint, static binaries, images, goreleaser snapshot, bench smoke, unit, envtest, netns e2e, image and demo tests, a short fuzz.
	KUBEBUILDER_ASSETS="$$(hack/envtest.sh)" HYPERDHCP_IMAGES=$(IMAGES_DIR) go test $(GO_TEST_FLAGS) work
	$(MAKE) --no-print-directory fuzz FUZZTIME=$(FUZZTIME_TEST)

.PHONY: bench-smoke
bench-smoke: ## One short, low-rate run of the bench script against every server, so it cannot rot.
	RATES=200 DURATION=2 CLIENTS=200 RESTART_LEASES=200 GO_BENCHMARKS=0 RESULTS=$(LOCALBIN)/bench/smoke hack/bench/dhcp.sh

FUZZTIME ?= 5m
FUZZTIME_TEST ?= 15s

.PHONY: fuzz
fuzz: ## Fuzz hyperdhcpd's packet handling and the lease allocator against its model (FUZZTIME=5m each).
	cd dhcpd && go test -run '^$$' -fuzz '^FuzzHandle$$' -fuzztime $(FUZZTIME) ./internal/server
	cd dhcpd && go test -run '^$$' -fuzz '^FuzzAllocatorModel$$' -fuzztime $(FUZZTIME) ./plugins/leasedb

.PHONY: bench
PAIR_RATES ?= 500 1000 2000 3000 4000 5000 6000 7000 8000 9000 10000 12000
bench: ## hyperdhcpd beside Kea, dnsmasq and stock CoreDHCP (perfdhcp sweep, chart), a 65,000-lease restart and the Go benchmarks, in one report, then 20 failovers of a hot-standby pair and its replication cost (a single replica's and the pair's sweep; root; SERVERS=, RATES=, DURATION=, PAIR_RATES=).
	hack/bench/dhcp.sh
	mkdir -p $(LOCALBIN)/bench && cd dhcpd/test/e2e && KUBEBUILDER_ASSETS="$$($(CURDIR)/hack/envtest.sh)" HYPERDHCP_HA_KILLS=20 \
		go test -count=1 -timeout 30m -run '^TestPairKillSeriesUnderLoad$$' -v . > $(LOCALBIN)/bench/failover.txt; \
		status=$$?; grep -E 'ACKs audited|^(ok|FAIL|---)' $(LOCALBIN)/bench/failover.txt; exit $$status
	cd dhcpd/test/e2e && KUBEBUILDER_ASSETS="$$($(CURDIR)/hack/envtest.sh)" HYPERDHCP_HA_RATES="$(PAIR_RATES)" HYPERDHCP_HA_SECONDS=10 \
		go test -count=1 -timeout 30m -run '^TestPairReplicationCost$$' -v . > $(LOCALBIN)/bench/replication.txt; \
		status=$$?; grep -E 'single|pair|^(ok|FAIL|---)' $(LOCALBIN)/bench/replication.txt; exit $$status


.PHONY: test-module
test-module: ## Run one module's tests: make test-module MODULE=apis/test
	cd $(MODULE) && KUBEBUILDER_ASSETS="$$($(CURDIR)/hack/envtest.sh)" go test $(GO_TEST_FLAGS) ./...

.PHONY: demo
demo: ## The whole product end to end on this machine (root; KEEP=1 leaves it running).
	@cd hack/demo && go run .

##@ Build

.PHONY: build
build: ## Build static bin/hyperdhcpd (cgo, SQLite) and bin/hyperdhcp-operator, version-stamped.
	CGO_ENABLED=1 go build -trimpath -tags 'netgo osusergo sqlite_omit_load_extension' \
		-ldflags '$(DHCPD_LDFLAGS) -linkmode external -extldflags "-static"' -o $(LOCALBIN)/hyperdhcpd ./dhcpd/cmd/hyperdhcpd
	CGO_ENABLED=0 go build -trimpath -ldflags '$(OPERATOR_LDFLAGS)' -o $(LOCALBIN)/hyperdhcp-operator ./operator/cmd/hyperdhcp-operator

.PHONY: verify-static
verify-static: build ## Check that both binaries run in an empty root, as on a scratch image.
	hack/verify-static.sh $(LOCALBIN)/hyperdhcpd $(LOCALBIN)/hyperdhcp-operator

RELEASE_DIR ?= $(LOCALBIN)/release
IMAGES_DIR ?= $(LOCALBIN)/images

.PHONY: images
images: build ## Build the hyperdhcpd and operator images offline (buildah, local base, nothing pulled) into OCI archives in bin/images.
	VERSION=$(VERSION) REVISION=$$(git rev-parse HEAD) IMAGES_DIR=$(IMAGES_DIR) hack/images.sh

.PHONY: release-check
release-check: $(GORELEASER) ## From a clean clone of HEAD: goreleaser check, a snapshot release (amd64, arm64 archives, checksums) and its images.
	GORELEASER=$(GORELEASER) hack/release-check.sh

.PHONY: release-manifests
release-manifests: ## Render deploy/default with the release images into bin/release/install.yaml.
	mkdir -p $(RELEASE_DIR)
	IMG=$(IMG) HYPERDHCPD_IMG=$(HYPERDHCPD_IMG) hack/deploy.sh render > $(RELEASE_DIR)/install.yaml
	@echo "$(RELEASE_DIR)/install.yaml: kubectl apply --server-side -f install.yaml"

##@ Deployment (against the current kubeconfig)

.PHONY: install
install: ## Install the CRDs.
	$(KUBECTL) apply --server-side $(DEPLOY_FLAGS) -k deploy/crd

.PHONY: uninstall
uninstall: ## Remove the CRDs (and with them every Server).
	$(KUBECTL) delete --ignore-not-found $(DEPLOY_FLAGS) -k deploy/crd

.PHONY: deploy
deploy: ## Install CRDs, RBAC and the operator (IMG=operator image, HYPERDHCPD_IMG=hyperdhcpd image).
	IMG=$(IMG) HYPERDHCPD_IMG=$(HYPERDHCPD_IMG) hack/deploy.sh apply --server-side $(DEPLOY_FLAGS)

.PHONY: undeploy
undeploy: ## Remove what deploy installed.
	IMG=$(IMG) HYPERDHCPD_IMG=$(HYPERDHCPD_IMG) hack/deploy.sh delete --ignore-not-found $(DEPLOY_FLAGS)

.PHONY: run
run: ## Run the operator from source against the current cluster.
	go run ./operator/cmd/hyperdhcp-operator --hyperdhcpd-image=$(HYPERDHCPD_IMG) --metrics-bind-address=0 --health-probe-bind-address=0 $(RUN_ARGS)

##@ Tools

$(LOCALBIN):
	mkdir -p $@

$(CONTROLLER_GEN):
	mkdir -p $(TOOLS_CACHE)
	GOWORK=off GOBIN=$(TOOLS_CACHE) go install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_TOOLS_VERSION)
	mv $(TOOLS_CACHE)/controller-gen $@

$(GORELEASER):
	mkdir -p $(TOOLS_CACHE)
	GOWORK=off GOBIN=$(TOOLS_CACHE) go install github.com/goreleaser/goreleaser/v2@$(GORELEASER_VERSION)
	mv $(TOOLS_CACHE)/goreleaser $@
