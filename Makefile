# vdisk — top-level build.
#
#   make            build libblockfmt.a, vdisk-nbd, vdisk-mount into $(BUILD)/
#   make check      install missing dependencies, build, run every test, then
#                   again under AddressSanitizer + UndefinedBehaviorSanitizer
#   make demo       install missing dependencies, build, show the tools on a
#                   sample image made on the spot
#   make bench      install the peers, build, time ours against them (tests/bench/)
#   make install    PREFIX=/usr/local DESTDIR=
#   make clean
#   make SAN=1      the sanitizer build, in build-asan/

PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
MANDIR  ?= $(PREFIX)/share/man
DESTDIR ?=
SAN     ?=
BUILD   ?= $(if $(SAN),build-asan,build)
CC      ?= cc
CFLAGS  ?= -O2 -g
PKG_CONFIG ?= pkg-config

VERSION := 0.1.0

LIB_PKGS = zlib libzstd libdeflate libnbd $(ISAL_PKG)
# ISA-L's inflate is optional (Debian builds it for amd64 and arm64 only):
# used when pkg-config finds it, else libdeflate does all deflate (codec.c).
ISAL_PKG = $(shell $(PKG_CONFIG) --exists libisal 2>/dev/null && echo libisal)
ISAL_DEF = $(if $(ISAL_PKG),-DHAVE_ISAL)
NBD_PKGS := libnl-genl-3.0
MOUNT_PKGS := fuse3 tsk

ifneq ($(SAN),)
SAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
CFLAGS := -O1 -g
endif

# Recursive (=) so pkg-config runs only when a compile needs it: after the
# dependency step of `make check` / `make demo` has installed what is missing.
PKG_CFLAGS = $(shell $(PKG_CONFIG) --cflags $(LIB_PKGS) 2>/dev/null)
PKG_LIBS   = $(shell $(PKG_CONFIG) --libs $(LIB_PKGS) 2>/dev/null)
NBD_CFLAGS = $(shell $(PKG_CONFIG) --cflags $(NBD_PKGS) 2>/dev/null)
NBD_LIBS   = $(shell $(PKG_CONFIG) --libs $(NBD_PKGS) 2>/dev/null)
MOUNT_CFLAGS = $(shell $(PKG_CONFIG) --cflags $(MOUNT_PKGS) 2>/dev/null)
MOUNT_LIBS   = $(shell $(PKG_CONFIG) --libs $(MOUNT_PKGS) 2>/dev/null)

ALL_CFLAGS = -std=gnu11 -D_GNU_SOURCE -Wall -Wextra -pthread -MMD -MP \
             -DVDISK_VERSION='"$(VERSION)"' -Iblockfmt $(ISAL_DEF) $(PKG_CFLAGS) $(SAN_FLAGS) \
             $(CPPFLAGS) $(CFLAGS)
ALL_LDFLAGS = -pthread $(SAN_FLAGS) $(LDFLAGS)
LIBS_ALL = $(BUILD)/libblockfmt.a $(PKG_LIBS) $(LDLIBS)

LIB_SRCS   := $(wildcard blockfmt/*.c)
NBD_SRCS   := $(wildcard server/*.c)
MOUNT_SRCS := $(wildcard fuse/*.c)
TOOL_SRCS  := $(wildcard tests/tools/*.c)
UNIT_SRCS  := $(wildcard tests/unit/*.c)

LIB_OBJS   := $(LIB_SRCS:%.c=$(BUILD)/%.o)
NBD_OBJS   := $(NBD_SRCS:%.c=$(BUILD)/%.o)
MOUNT_OBJS := $(MOUNT_SRCS:%.c=$(BUILD)/%.o)
TOOLS      := $(TOOL_SRCS:tests/tools/%.c=$(BUILD)/tests/%)
UNITS      := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/unit/%)

PROGS := $(BUILD)/vdisk-nbd $(BUILD)/vdisk-mount

.PHONY: all testprogs check check-fast demo deps install uninstall clean pkgcheck bench

all: pkgcheck $(BUILD)/libblockfmt.a $(PROGS)

testprogs: all $(TOOLS) $(UNITS)

pkgcheck:
	@$(PKG_CONFIG) --exists $(LIB_PKGS) $(NBD_PKGS) $(MOUNT_PKGS) || { \
	  echo "Missing build dependencies ($(LIB_PKGS) $(NBD_PKGS) $(MOUNT_PKGS)); run tests/deps.sh as root," \
	       "or 'make check' / 'make demo', which run it." >&2; exit 1; }

$(BUILD)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(NBD_OBJS): ALL_CFLAGS += $(NBD_CFLAGS)
$(MOUNT_OBJS): ALL_CFLAGS += $(MOUNT_CFLAGS)

$(BUILD)/libblockfmt.a: $(LIB_OBJS)
	@rm -f $@
	$(AR) rcs $@ $^

$(BUILD)/vdisk-nbd: $(NBD_OBJS) $(BUILD)/libblockfmt.a
	$(CC) $(ALL_LDFLAGS) -o $@ $(NBD_OBJS) $(LIBS_ALL) $(NBD_LIBS)

$(BUILD)/vdisk-mount: $(MOUNT_OBJS) $(BUILD)/libblockfmt.a
	$(CC) $(ALL_LDFLAGS) -o $@ $(MOUNT_OBJS) $(LIBS_ALL) $(MOUNT_LIBS)

$(BUILD)/tests/%: $(BUILD)/tests/tools/%.o $(BUILD)/libblockfmt.a
	$(CC) $(ALL_LDFLAGS) -o $@ $< $(LIBS_ALL)

$(BUILD)/tests/unit/%: $(BUILD)/tests/unit/%.o $(BUILD)/libblockfmt.a
	$(CC) $(ALL_LDFLAGS) -o $@ $< $(LIBS_ALL)

deps:
	tests/deps.sh

# Every test, on the normal build and on the sanitizer build.
check: deps
	$(MAKE) testprogs
	$(MAKE) SAN=1 testprogs
	tests/run build build-asan

# The normal build only, for quick iteration.
check-fast: deps
	$(MAKE) testprogs
	tests/run build

demo: deps
	$(MAKE) all
	tests/demo.sh $(BUILD)

# Side-by-side timings against qemu-nbd, nbdkit and the FUSE mounters (issue 8).
# Never part of `make check`: timings do not decide pass/fail.
bench: deps
	tests/deps.sh --bench
	$(MAKE) all
	tests/bench/run $(BUILD)

install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man8
	install -m 0755 $(PROGS) $(DESTDIR)$(BINDIR)/
	install -m 0644 man/vdisk-mount.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 0644 man/vdisk-nbd.8 $(DESTDIR)$(MANDIR)/man8/

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/vdisk-nbd $(DESTDIR)$(BINDIR)/vdisk-mount \
	      $(DESTDIR)$(MANDIR)/man1/vdisk-mount.1 $(DESTDIR)$(MANDIR)/man8/vdisk-nbd.8

clean:
	rm -rf build build-asan

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
