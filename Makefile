# bootserve — see README.md. The two commands that set up a fresh Debian
# machine (as root): `make demo` and `make test`.

GO        ?= go
BIN       ?= bin/bootserve
GOBIN     := $(shell $(GO) env GOPATH)/bin
# Debian packages the tests and the demo run against (real peers, real firmware).
DEB_PKGS  := qemu-system-x86 qemu-utils ovmf ipxe ipxe-qemu dnsmasq-base busybox-static \
             cpio iproute2 tcpdump nix-bin zstd tftp-hpa curl ca-certificates chromium systemd
# How much each fuzz target runs in `make test`: a count of inputs, because a
# wall-clock -fuzztime can fail with "context deadline exceeded" and no
# crasher when a loaded host delays the workers at the deadline (a race in
# Go's fuzz coordinator). Longer runs: make fuzz FUZZTIME=10m.
FUZZTIME  ?= 30000x

.PHONY: all build firmware deps test unit lint e2e demo fuzz bench clean

all: build

build:
	$(GO) build -ldflags "-X main.version=$$(git describe --always --dirty 2>/dev/null || echo dev)" -o $(BIN) ./cmd/bootserve

# Extract Debian's iPXE builds without installing the package, so `go build`
# embeds them and the binary is self-contained.
firmware:
	scripts/extract-firmware.sh firmware/blobs

# Install the Debian packages the tests and demo need (idempotent).
deps:
	scripts/install-deps.sh $(DEB_PKGS)

lint: build
	sed 's#/usr/local/bin/bootserve#$(CURDIR)/$(BIN)#' contrib/bootserve.service > $(BIN).service
	systemd-analyze verify $(BIN).service
	test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...
	test -x $(GOBIN)/staticcheck || $(GO) install honnef.co/go/tools/cmd/staticcheck@latest
	$(GOBIN)/staticcheck ./...

# Everything: lint, unit and integration tests, end-to-end boots of real
# firmware in network namespaces, short fuzz runs. Needs root.
test: deps firmware lint
	BOOTSERVE_E2E=1 BOOTSERVE_REQUIRE_NIX=1 BOOTSERVE_REQUIRE_NETNS=1 \
	  $(GO) test -count=1 -timeout 35m ./...
	$(MAKE) fuzz

unit:
	$(GO) test ./...

fuzz:
	scripts/fuzz.sh $(FUZZTIME)

# PXE-boot a QEMU VM from bootserve in an isolated namespaced LAN, then tear down.
demo: deps firmware build
	BOOTSERVE_E2E=1 BOOTSERVE_DEMO=1 $(GO) test -count=1 -timeout 10m -run 'TestDemo$$' -v ./e2e

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

clean:
	rm -rf bin
	find firmware/blobs -type f ! -name README.md -delete
