#!/usr/bin/env bash
# An emulated Raspberry Pi: a Debian Trixie arm64 root with Python 3.13 run through qemu-user.
#
#   pi/pi_root.sh check             can this machine have the root? (exit 0 yes, 3 no: the reason on stderr)
#   pi/pi_root.sh build             build the root and its venv once (cached; a stamp says it is done)
#   pi/pi_root.sh exec CMD ARGS...  run CMD inside the root, the repo at /work/repo (read-only), shared at /work/shared
#   pi/pi_root.sh test [PYTEST...]  build if needed, then run the device suite (pi/device_tests.txt) on arm64
#
# Cache: $EDGECLS_PI_CACHE (default ~/.cache/edgecls/pi-trixie-arm64): root/, debs/ (apt), wheels/ (pip).
# See docs/arm64.md for what it runs, how long it takes and the pitfalls it works around.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SHARED=${EDGECLS_SHARED:-$(cd "$REPO/.." && pwd)/shared}
CACHE=${EDGECLS_PI_CACHE:-${HOME:-/root}/.cache/edgecls/pi-trixie-arm64}
ROOT=$CACHE/root
SUITE=trixie
PY_WANT=3.13
# Inside the root: where the repo and ../shared appear, and the venv.
IN_REPO=/work/repo
IN_SHARED=/work/shared
IN_VENV=/opt/edgecls-venv
# The CPU qemu emulates: a Raspberry Pi 5's Cortex-A76, not qemu's default "max". Under "max" (SVE2, SME)
# OpenBLAS and XNNPACK pick kernels whose results come out wrong under qemu 7.2: numpy-fitted heads (edgecls
# learn) diverge, the demo's int8 model scores chance. A Pi has neither; here they choose what a Pi 5 runs.
PI_CPU=${EDGECLS_PI_CPU:-cortex-a76}
ROOT_STAMP=$ROOT/.edgecls-root-ok
VENV_STAMP=$ROOT$IN_VENV/.edgecls-deps

say() { printf 'test-pi: %s\n' "$*" >&2; }
# 3 = skipped; `test` (make test-pi) turns it into exit 0 with the SKIP line, as pytest does for a skip.
SKIP_RC=3
skip() { printf 'test-pi: SKIP: %s\n' "$*" >&2; exit "$SKIP_RC"; }

# Step 0: what this machine must have. Each missing piece is a reason to skip, said plainly.
check() {
    [ "$(uname -s)" = Linux ] || skip "needs Linux (qemu-user and binfmt_misc), this is $(uname -s)"
    [ "$(id -u)" = 0 ] || skip "needs root (mmdebstrap --mode=root, bind mounts, chroot); run it as root or in a VM"
    case "$(uname -m)" in
        aarch64) ;;  # a real arm64 machine needs no emulation
        *)
            [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || skip "qemu-aarch64 is not registered in binfmt_misc:" \
                "apt-get install qemu-user-static binfmt-support; mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc;" \
                "update-binfmts --enable qemu-aarch64"
            grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || skip "binfmt qemu-aarch64 is registered but disabled: update-binfmts --enable qemu-aarch64"
            # F (fix binary): the interpreter is opened at registration, so it works inside a chroot without a copy
            grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 || skip "binfmt qemu-aarch64 lacks the F flag (qemu-user-static registers it with F)"
            ;;
    esac
    if [ ! -e "$ROOT_STAMP" ]; then
        command -v mmdebstrap >/dev/null || skip "mmdebstrap is not installed (apt-get install mmdebstrap) and no root is cached in $CACHE"
    fi
    command -v unshare >/dev/null || skip "unshare (util-linux) is missing"
    unshare -m true 2>/dev/null || skip "cannot make a private mount namespace here (unshare -m failed: a container without CAP_SYS_ADMIN?)"
    [ -d "$SHARED/models" ] || skip "$SHARED/models is missing: the device suite reads the real models in ../shared (or set EDGECLS_SHARED)"
}

# The host's Debian mirror when it has one (a local mirror is faster), else deb.debian.org.
mirror() {
    local uri
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | grep -oE '(https?://[^ ]+/debian)/?( |$)' | grep -v -- '-security' | head -n1 | tr -d ' ' || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

# Step 1: the root (once). minbase + python3 + venv; apt's downloads are kept in $CACHE/debs for a rebuild.
build_root() {
    [ -e "$ROOT_STAMP" ] && return 0
    local tmp=$CACHE/root.tmp m started=$SECONDS
    m=$(mirror)
    mkdir -p "$CACHE/debs"
    rm -rf "$tmp"
    say "step 1/2: building the $SUITE arm64 root from $m (3-5 minutes under qemu; once)"
    mmdebstrap --mode=root --variant=minbase --arch=arm64 \
        --include=python3,python3-venv,ca-certificates \
        --skip=essential/unlink \
        --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
        --setup-hook="sync-in $CACHE/debs /var/cache/apt/archives/" \
        --customize-hook="sync-out /var/cache/apt/archives $CACHE/debs" \
        "$SUITE" "$tmp" "$m"
    local v
    v=$(chroot "$tmp" /usr/bin/env -i /usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [ "$v" = "$PY_WANT" ] || { say "the $SUITE root has Python $v, expected $PY_WANT"; exit 1; }
    rm -rf "$ROOT"
    mv "$tmp" "$ROOT"
    date -u +%FT%TZ > "$ROOT_STAMP"
    say "step 1/2 done in $((SECONDS - started)) s"
}

# A fake /proc/cpuinfo of a Raspberry Pi 5 (Cortex-A76). qemu-user passes the host's x86 cpuinfo through,
# and LiteRT's cpuinfo then takes an aarch64 process for a CPU without features: allocate_tensors segfaults.
fake_cpuinfo() {
    local i
    for i in 0 1 2 3; do
        printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n' "$i"
        printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: 0xd0b\nCPU revision\t: 1\n\n'
    done
    printf 'Revision\t: d04170\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0 (emulated)\n'
}

# Runs inside a private mount namespace (unshare -m): every mount below vanishes with it, and the trap
# unmounts them in order as well, so nothing leaks onto the host even when a test hangs and is killed.
MOUNTS=()
inner_exec() {
    cleanup() {
        local i
        for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do umount -l "${MOUNTS[i]}" 2>/dev/null || true; done
    }
    trap cleanup EXIT
    mnt() { mount "$@"; MOUNTS+=("${!#}"); }
    mount --make-rprivate /
    mnt -t proc proc "$ROOT/proc"
    # /sys: without it LiteRT's cpuinfo fails and the interpreter runs WITHOUT XNNPACK, silently.
    mnt --rbind /sys "$ROOT/sys"
    fake_cpuinfo > "$CACHE/cpuinfo"
    mnt --bind "$CACHE/cpuinfo" "$ROOT/proc/cpuinfo"
    mnt --rbind /dev "$ROOT/dev"
    mnt -t tmpfs -o size=4g tmpfs "$ROOT/tmp"
    mkdir -p "$ROOT$IN_REPO" "$ROOT$IN_SHARED" "$ROOT/var/cache/edgecls-wheels" "$CACHE/wheels" "$ROOT/etc/edgecls" \
        "$ROOT/out"
    mnt --bind "$REPO" "$ROOT$IN_REPO"
    mount -o remount,bind,ro "$ROOT$IN_REPO"
    if [ -d "$SHARED" ]; then
        mnt --bind "$SHARED" "$ROOT$IN_SHARED"
        mount -o remount,bind,ro "$ROOT$IN_SHARED"
    fi
    mnt --bind "$CACHE/wheels" "$ROOT/var/cache/edgecls-wheels"
    # pip inside needs the host's CA bundle (a proxy's CA may be in it) and its resolver
    local ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
    [ -f "$ca" ] && cp "$ca" "$ROOT/etc/edgecls/host-ca.crt"
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
    local outdir=${EDGECLS_PI_OUT:-}
    if [ -n "$outdir" ]; then
        mkdir -p "$ROOT/out"
        mnt --bind "$outdir" "$ROOT/out"
    fi
    # A clean environment: the host's PYTHONPATH, pip config (x86 find-links) or venv must not leak in.
    export QEMU_CPU=$PI_CPU  # read by every qemu-user that binfmt starts, inside too (it is in envs below)
    local envs=(QEMU_CPU=$PI_CPU HOME=/root PATH=$IN_VENV/bin:/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 TERM=dumb
        PYTHONPATH=$IN_REPO PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 EDGECLS_SHARED=$IN_SHARED
        PIP_CERT=/etc/edgecls/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180
        EDGECLS_PI=arm64-qemu)
    local name
    for name in ${EDGECLS_PI_PASS_ENV:-}; do envs+=("$name=${!name:-}"); done
    set +e
    chroot "$ROOT" /usr/bin/env -i "${envs[@]}" /bin/sh -c 'cd "$0" && exec "$@"' "$IN_REPO" "$@"
    local rc=$?
    set -e
    return $rc
}

in_root() {
    unshare --mount --propagation private "$HERE/pi_root.sh" _inner "$@"
}

# Step 2: the venv, from aarch64 wheels only: the [edge,fleet] extras (read from pyproject.toml) + pytest.
# Redone when that list changes. The wheels are kept in $CACHE/wheels (pip's HTTP cache is not enough: a proxy's
# headers may forbid caching), so a rebuilt root installs them again without downloading.
PIP_EXTRA="pytest>=8 pytest-timeout>=2.2"
build_venv() {
    local want started=$SECONDS
    in_root /usr/bin/python3 "$IN_REPO/pi/requirements.py" "$IN_REPO/pyproject.toml" edge fleet > "$CACHE/requirements.txt"
    printf '%s\n' $PIP_EXTRA >> "$CACHE/requirements.txt"
    want=$(sha256sum < "$CACHE/requirements.txt" | cut -c1-16)
    [ -e "$VENV_STAMP" ] && [ "$(cat "$VENV_STAMP")" = "$want" ] && return 0
    say "step 2/2: the venv: pip install [edge,fleet] + pytest from aarch64 wheels (2-4 minutes uncached)"
    # pip install -r into a venv that already exists brings it up to date; only a missing one is made (2 minutes)
    [ -x "$ROOT$IN_VENV/bin/pip" ] || { rm -rf "$ROOT$IN_VENV"; in_root /usr/bin/python3 -m venv "$IN_VENV"; }
    cp "$CACHE/requirements.txt" "$ROOT/etc/edgecls/requirements.txt"
    in_root python -m pip download --quiet --only-binary=:all: -r /etc/edgecls/requirements.txt \
        -d /var/cache/edgecls-wheels
    in_root python -m pip install --no-index --find-links /var/cache/edgecls-wheels -r /etc/edgecls/requirements.txt
    echo "$want" > "$VENV_STAMP"
    say "step 2/2 done in $((SECONDS - started)) s"
}

build() {
    check
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock 9  # a second make test-pi waits for the first one's build instead of racing it
    build_root
    build_venv
    flock -u 9
    say "root ready: $ROOT ($(in_root python -c 'import platform, sys; print(platform.machine(), "Python", sys.version.split()[0])'))"
}

# The device suite: pi/device_tests.txt (TensorFlow-free tests that run on the device) on arm64 Python 3.13,
# with a host mosquitto for the MQTT link (the chroot shares the host's network namespace).
BROKER_PID=""
run_suite() {
    build
    local port rc tests=()
    if command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; then
        port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" > "$CACHE/mosquitto.conf"
        "$(command -v mosquitto || echo /usr/sbin/mosquitto)" -c "$CACHE/mosquitto.conf" >"$CACHE/mosquitto.log" 2>&1 &
        BROKER_PID=$!
        trap '[ -z "$BROKER_PID" ] || kill "$BROKER_PID" 2>/dev/null || true' EXIT
        export EDGECLS_PI_BROKER="mqtt://127.0.0.1:$port"
        say "host broker: mosquitto on 127.0.0.1:$port (pid $BROKER_PID)"
    else
        say "no mosquitto on the host: the MQTT link test skips (apt-get install mosquitto)"
    fi
    export EDGECLS_PI_PASS_ENV="EDGECLS_PI_BROKER ${EDGECLS_PI_PASS_ENV:-}"
    # one node id or file per line; '#' starts a comment
    mapfile -t tests < <(sed -e 's/#.*//' -e 's/[[:space:]]*$//' "$HERE/device_tests.txt" | grep -v '^$')
    say "running the device suite (${#tests[@]} entries of pi/device_tests.txt) on arm64 (emulated: about 1 s per inference)"
    set +e
    in_root python -m pytest -p no:cacheprovider -o addopts="-ra --strict-markers" "${tests[@]}" "$@"
    rc=$?
    set -e
    [ $rc = 0 ] && say "device suite passed on arm64" || say "device suite FAILED on arm64 (pytest exit $rc)"
    return $rc
}

main() {
    local cmd=${1:-test}
    shift || true
    case "$cmd" in
        _inner) inner_exec "$@" ;;
        check) check; say "ok: the arm64 root can be built or is cached in $CACHE" ;;
        build) build ;;
        exec) check; [ -e "$ROOT_STAMP" ] && [ -e "$VENV_STAMP" ] || { say "no root yet: run pi/pi_root.sh build"; exit 3; }; in_root "$@" ;;
        test) SKIP_RC=0; run_suite "$@" ;;
        *) say "unknown command '$cmd': use check, build, exec CMD... or test [PYTEST ARGS]"; exit 2 ;;
    esac
}

main "$@"
