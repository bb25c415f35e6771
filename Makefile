# Ferry: `make demo` runs the main job, `make test` the whole suite. Both
# install what they need first (scripts/deps.sh), as root on Debian 12.
SHELL      := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)
GO         ?= go
IMAGE_DIR  ?= /var/cache/ferry/images
BIN        := $(CURDIR)/bin
TEST_TIMEOUT ?= 25m

.PHONY: all deps test-deps build image demo test unit e2e bench vet fuzz soak clean

all: build

deps:
	@scripts/deps.sh

build: deps
	$(GO) build -o $(BIN)/ferry ./cmd/ferry
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/ferry-guest ./cmd/ferry-guest

image: build
	$(BIN)/ferry image build --image-dir $(IMAGE_DIR)

demo: image
	FERRY=$(BIN)/ferry IMAGE_DIR=$(IMAGE_DIR) scripts/demo.sh

vet: deps
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# A second, older QEMU build for the mixed-version test (unpacked, not
# installed; Debian 12 only: elsewhere the test is told why there is none).
OLD_QEMU = $(shell scripts/old-qemu.sh 2>/dev/null || echo "unavailable: scripts/old-qemu.sh found no older QEMU build for this system")

# What only the tests need (a Prometheus server), besides what build needs.
test-deps:
	@FERRY_TEST_DEPS=1 scripts/deps.sh

# The whole suite: unit tests and end-to-end tests against real QEMU and etcd.
test: test-deps image vet
	FERRY_OLD_QEMU="$(OLD_QEMU)" FERRY_BIN=$(BIN)/ferry FERRY_IMAGE_DIR=$(IMAGE_DIR) $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...
	$(MAKE) --no-print-directory fuzz FUZZTIME=5s

unit: deps
	$(GO) test -count=1 -short ./...

e2e: test-deps image
	FERRY_OLD_QEMU="$(OLD_QEMU)" FERRY_BIN=$(BIN)/ferry FERRY_IMAGE_DIR=$(IMAGE_DIR) $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -v ./test/e2e/

# The HA fault suite, every scenario repeated (SOAK rounds).
SOAK ?= 5
soak: image
	FERRY_SOAK=$(SOAK) FERRY_BIN=$(BIN)/ferry FERRY_IMAGE_DIR=$(IMAGE_DIR) $(GO) test -count=1 -timeout 0 -v -run TestHAFaults ./test/e2e/

# Short fuzz runs of the QMP reader and the API's body decoding.
FUZZTIME ?= 15s
fuzz: deps
	$(GO) test -run '^$$' -fuzz FuzzQMPReader -fuzztime $(FUZZTIME) ./internal/qemu/
	$(GO) test -run '^$$' -fuzz FuzzDecodeBodies -fuzztime $(FUZZTIME) ./internal/apiserver/

bench: image
	$(BIN)/ferry bench startup --json --image-dir $(IMAGE_DIR)

clean:
	rm -rf $(BIN)
