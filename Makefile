# lusidauth - build, test, demo. Everything is overridable: make LUA_VERSION=5.1 CC=clang ...
LUA_VERSION ?= 5.4
PKG_CONFIG  ?= pkg-config
CC          ?= cc
PREFIX      ?= /usr/local
DESTDIR     ?=
BUILD       ?= build/$(LUA_VERSION)

ifeq ($(LUA_VERSION),jit)
  LUA_PC    ?= luajit
  LUA       ?= luajit
  LUA_ABI   := 5.1
else
  LUA_PC    ?= lua$(LUA_VERSION)
  LUA       ?= lua$(LUA_VERSION)
  LUA_ABI   := $(LUA_VERSION)
endif

LUA_CFLAGS  := $(shell $(PKG_CONFIG) --cflags $(LUA_PC) 2>/dev/null)
CURL_CFLAGS := $(shell $(PKG_CONFIG) --cflags libcurl 2>/dev/null)
LINK_LIBS   := $(shell $(PKG_CONFIG) --libs libcurl libssl libcrypto hiredis 2>/dev/null || echo -lcurl -lssl -lcrypto -lhiredis)

WARN     = -Wall -Wextra -Wshadow -Wpointer-arith -Wcast-qual -Wstrict-prototypes \
           -Wmissing-prototypes -Wdeclaration-after-statement -Wformat=2
CFLAGS  ?= -O2 -g
ALL_CFLAGS = -std=c99 -fPIC -fvisibility=hidden $(WARN) $(LUA_CFLAGS) $(CURL_CFLAGS) $(CFLAGS)
LDFLAGS ?=
LIBFLAG ?= -shared

INSTALL_LMOD ?= $(PREFIX)/share/lua/$(LUA_ABI)
INSTALL_CMOD ?= $(PREFIX)/lib/lua/$(LUA_ABI)
INSTALL_BIN  ?= $(PREFIX)/bin

SRCS = csrc/core.c csrc/client.c csrc/options.c csrc/api.c csrc/step.c csrc/flow.c csrc/cache.c csrc/http.c csrc/response.c \
       csrc/secret.c csrc/form.c csrc/error.c csrc/store.c csrc/store_file.c csrc/store_redis.c
OBJS = $(SRCS:csrc/%.c=$(BUILD)/%.o)
HDRS = $(wildcard csrc/*.h)
MODULE = $(BUILD)/lusidauth/core.so

.PHONY: all deps test check demo install uninstall clean clean-build lint rock embed embed-tsan bench-build fuzz fuzz-build fuzz-smoke static bench bench-smoke bench-prereqs

all: $(MODULE)

$(BUILD)/%.o: csrc/%.c $(HDRS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(MODULE): $(OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(LIBFLAG) $(LDFLAGS) -o $@ $(OBJS) $(LINK_LIBS) -lpthread

# Installs the Debian packages the build, the tests and the demo need (prints what it does).
deps:
	@sh tools/deps.sh

# Every Lua version, then the summary line. One version: make check LUA_VERSION=5.1
test: deps
	@sh tools/test.sh

check: $(MODULE)
	@sh tools/test.sh --lua $(LUA_VERSION)

demo: deps $(MODULE)
	@sh tools/demo.sh $(LUA_VERSION)

lint:
	luacheck lua spec examples $(wildcard bin/*)

install: $(MODULE)
	install -d $(DESTDIR)$(INSTALL_CMOD)/lusidauth $(DESTDIR)$(INSTALL_LMOD)/lusidauth
	install -m 0755 $(MODULE) $(DESTDIR)$(INSTALL_CMOD)/lusidauth/core.so
	install -m 0644 lua/lusidauth/*.lua $(DESTDIR)$(INSTALL_LMOD)/lusidauth/
	install -d $(DESTDIR)$(INSTALL_BIN)
	sed '1s|.*|#!/usr/bin/env $(LUA)|' bin/lusidauth > $(DESTDIR)$(INSTALL_BIN)/lusidauth
	chmod 0755 $(DESTDIR)$(INSTALL_BIN)/lusidauth

uninstall:
	rm -f $(DESTDIR)$(INSTALL_CMOD)/lusidauth/core.so $(DESTDIR)$(INSTALL_BIN)/lusidauth
	rm -f $(addprefix $(DESTDIR)$(INSTALL_LMOD)/lusidauth/,$(notdir $(wildcard lua/lusidauth/*.lua)))

clean:
	rm -rf build

# A from-scratch build of one version (CI builds each with -Werror).
clean-build:
	rm -rf $(BUILD)
	$(MAKE) LUA_VERSION=$(LUA_VERSION) all

# The rockspec, built and installed by Debian's luarocks into build/rocks, offline. lua-cjson comes
# from Debian (lua-cjson), which luarocks cannot see, hence --deps-mode=none.
rock:
	luarocks --lua-version=$(LUA_ABI) --tree=build/rocks make --deps-mode=none lusidauth-scm-1.rockspec

# The C host that embeds Lua (examples/embed/host.c): threads, each with its own lua_State.
EMBED_LUA_PC ?= lua5.4
embed: build/embed/host
build/embed/host: examples/embed/host.c
	@mkdir -p $(dir $@)
	$(CC) -std=c99 -O2 -g -Wall -Wextra $(shell $(PKG_CONFIG) --cflags $(EMBED_LUA_PC) libcurl) $< -o $@ \
	  $(shell $(PKG_CONFIG) --libs $(EMBED_LUA_PC) libcurl) -lpthread

# The same, with the module and the host built under ThreadSanitizer.
embed-tsan:
	$(MAKE) LUA_VERSION=5.4 BUILD=build/tsan CFLAGS="-O1 -g -fsanitize=thread" LDFLAGS="-fsanitize=thread" all
	@mkdir -p build/tsan
	$(CC) -std=c99 -O1 -g -fsanitize=thread $(shell $(PKG_CONFIG) --cflags $(EMBED_LUA_PC) libcurl) \
	  examples/embed/host.c -o build/tsan/host $(shell $(PKG_CONFIG) --libs $(EMBED_LUA_PC) libcurl) -lpthread

# What the benchmarks need built: the floor module and the clock probe.
bench-build: all
	@mkdir -p build/bench
	$(CC) -O2 -shared -fPIC $(shell $(PKG_CONFIG) --cflags lua5.4) bench/floor.c -o build/bench/benchfloor.so
	$(CC) -O2 bench/clocks.c -o build/bench/clocks

# libFuzzer harnesses (fuzz/README.md): fuzz-smoke is the fixed budget make test runs.
fuzz fuzz-build fuzz-smoke:
	$(MAKE) -f fuzz/Makefile $@

# cppcheck and clang-tidy on csrc/
static:
	@sh tools/static.sh

# Benchmarks (bench/run.sh): every section side by side in rounds, one table of medians and
# ratios, written to bench/RESULTS.md. bench-smoke: one round, tiny counts, for CI; it fails only
# when a benchmark did not run or gave no number, never on a timing.
bench-prereqs: bench-build
	$(MAKE) LUA_VERSION=5.4 all
	$(MAKE) LUA_VERSION=jit all
	$(MAKE) embed
bench: bench-prereqs
	bash bench/run.sh
bench-smoke: bench-prereqs
	bash bench/run.sh --smoke
