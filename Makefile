# Warren: an AMQP 0-9-1 broker. `make help` lists the targets.
CC      ?= cc
PYTHON  := /usr/bin/python3
BUILD   ?= build
SAN     ?=
OPT     ?= -O2

CFLAGS  := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -g $(OPT) -I. -I$(BUILD)/gen
LDLIBS  := -levent -lsqlite3 -lm -lpthread
ifeq ($(SAN),1)
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif

GEN      := $(BUILD)/gen/amqp_methods.c $(BUILD)/gen/amqp_methods.h
LIB_SRC  := $(wildcard common/*.c amqp/*.c exchanges/*.c storage/*.c)
SRV_SRC  := $(filter-out server/main.c,$(wildcard server/*.c))
LIB_OBJ  := $(patsubst %.c,$(BUILD)/obj/%.o,$(LIB_SRC)) $(BUILD)/obj/gen/amqp_methods.o
SRV_OBJ  := $(patsubst %.c,$(BUILD)/obj/%.o,$(SRV_SRC))
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))

.PHONY: all run test unit asan deps deps-test clean help
# Packages first, then the build: a parallel make must not compile before they are there.
all: deps
	@$(MAKE) --no-print-directory $(BUILD)/warren

help:
	@echo "make            build build/warren (installs missing Debian packages)"
	@echo "make run        build and run the broker in the foreground (port 5672)"
	@echo "make test       build and run every test, also under ASan/UBSan"
	@echo "make unit       C unit tests only"
	@echo "make asan       build build/asan/warren with sanitizers"
	@echo "make clean      remove build/"

deps:
	@tools/install-deps.sh build
deps-test:
	@tools/install-deps.sh test

$(BUILD)/gen/amqp_methods.c $(BUILD)/gen/amqp_methods.h &: amqp/gen_codec.py amqp/spec/amqp-rabbitmq-0.9.1.json
	@mkdir -p $(BUILD)/gen
	$(PYTHON) amqp/gen_codec.py amqp/spec/amqp-rabbitmq-0.9.1.json $(BUILD)/gen

$(BUILD)/obj/gen/amqp_methods.o: $(BUILD)/gen/amqp_methods.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/obj/%.o: %.c $(GEN)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/libwarren.a: $(LIB_OBJ) $(SRV_OBJ)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/warren: $(BUILD)/obj/server/main.o $(BUILD)/libwarren.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(wildcard tests/unit/*.h) $(BUILD)/libwarren.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libwarren.a $(LDFLAGS) $(LDLIBS) -lcmocka

$(BUILD)/interop/%: interop/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(LDFLAGS) -lrabbitmq

run: all
	$(BUILD)/warren $(ARGS)

.PHONY: bench
$(BUILD)/warren-bench: tools/warren-bench.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(LDFLAGS) -lrabbitmq -lpthread

$(BUILD)/relay-floor: tools/relay-floor.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(LDFLAGS) -lpthread

bench: all
	@tools/install-deps.sh bench
	@$(MAKE) --no-print-directory $(BUILD)/warren-bench $(BUILD)/relay-floor
	SCEN="$(SCEN)" RUNS="$(RUNS)" WARREN_BIN=$(BUILD)/warren BENCH_BIN=$(BUILD)/warren-bench \
	  FLOOR_BIN=$(BUILD)/relay-floor tools/bench.sh

unit: deps-test
	@$(MAKE) --no-print-directory $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; $$t; done

asan: deps
	@$(MAKE) --no-print-directory BUILD=build/asan SAN=1 OPT=-O1 build/asan/warren

INTEROP_BIN := $(patsubst interop/%.c,$(BUILD)/interop/%,$(wildcard interop/*.c))

test: deps-test
	@$(MAKE) --no-print-directory $(BUILD)/warren $(BUILD)/warren-bench $(BUILD)/relay-floor $(UNIT_BIN) $(INTEROP_BIN) asan
	tests/run-all.sh

clean:
	rm -rf build

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
