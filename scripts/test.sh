#!/usr/bin/env bash
# scripts/test.sh - install what is missing, then run the whole test suite.
#
#   scripts/test.sh                 # deps (when missing) + python3 -m pytest -q
#   scripts/test.sh -k nullfs -x    # extra arguments go to pytest
#   scripts/test.sh --deps-only     # only install what is missing (used by the other scripts)
#   ZRAMFS_NO_INSTALL=1 scripts/test.sh   # never install anything, just run pytest
#   ZRAMFS_NO_LINT=1 scripts/test.sh      # skip the lint and type checks (quick local runs)
#   ZRAMFS_TEST_TIMEOUT=3600              # seconds before a pytest pass is stopped
#   ZRAMFS_TEST_BUILDS="compiled pure"    # which builds the suite runs in (default: both when
#                                         # the install compiled the allocator, else "pure")
#   ZRAMFS_PURE_FULL=1                    # the pure pass runs the tests marked same_in_both_builds
#                                         # too (default when both builds run: it skips them)
#   ZRAMFS_TEST_SERIAL=1                  # one pytest process per pass (default: two xdist workers)
#
# The suite runs twice: on the compiled build (mypyc, setup.py) and on the pure-Python sources
# (ZRAMFS_PURE_PYTHON=1); an install that could not compile (no C compiler or Python headers)
# says so in one line and runs the pure pass only.  The exit code is the first failing pass's.
#
# Before the suite it runs `ruff check .`, `ruff format --check .` and `mypy` (configured in
# pyproject.toml); any of them failing fails the script (exit 1) before pytest starts.
# It is the README's test command and what CI (.ci/run) runs. It exits with pytest's exit code.
# Installing needs root (apt-get, modprobe, pip); without root it only reports what is missing.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${PYTHON:-python3}"

log() { printf '[test.sh] %s\n' "$*" >&2; }

# Debian package names (bookworm; trixie renamed libfuse2 -> libfuse2t64).
# gcc, libc6-dev and python3-dev: what setup.py needs to compile the allocator and the device (mypyc).
APT_PKGS=(fuse3 fio e2fsprogs util-linux procps kmod nbdkit libnbd-bin gcc libc6-dev python3-dev)

apt_candidate() {  # prints the first of the given names that apt can install
    local p
    for p in "$@"; do
        # no `| grep -q` under pipefail: grep's early exit can SIGPIPE the writer
        if apt-cache policy "$p" 2>/dev/null | grep 'Candidate: [0-9]' >/dev/null; then
            echo "$p"; return 0
        fi
    done
    return 1
}

system_missing() {  # prints a reason for each system prerequisite that is absent
    local c
    for c in fio mkfs.ext4 losetup mkswap swapon fusermount3 modprobe nbdkit nbdfuse gcc; do
        command -v "$c" >/dev/null 2>&1 || echo "command $c"
    done
    local libs; libs="$(ldconfig -p 2>/dev/null || true)"
    grep -q 'libfuse\.so\.2' <<<"$libs" || echo "libfuse.so.2"
    grep -q 'libfuse3\.so\.3' <<<"$libs" || echo "libfuse3.so.3"
}

install_system() {
    local missing
    missing="$(system_missing)"
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        log "missing (not installing: needs root and apt-get): $(echo $missing)"
        return 0
    fi
    log "installing system packages (missing: $(echo $missing))"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    local pkgs=("${APT_PKGS[@]}") libfuse2
    if libfuse2="$(apt_candidate libfuse2t64 libfuse2)"; then pkgs+=("$libfuse2"); fi
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
}

ensure_fuse_device() {
    [ "$(id -u)" = 0 ] || return 0
    if [ ! -e /dev/fuse ]; then
        modprobe fuse 2>/dev/null || true
    fi
    if [ ! -e /dev/fuse ]; then      # containers: the module is in the host kernel, the node is not
        mknod -m 0666 /dev/fuse c 10 229 2>/dev/null || true
    fi
}

python_missing() {  # prints what the Python side lacks ("" when the project is installed from this checkout)
    (cd / && "$PY" - "$REPO" <<'PY') 2>/dev/null || echo "python"
import importlib.metadata as md, json, os, re, sys, tomllib
repo = os.path.realpath(sys.argv[1])
with open(os.path.join(repo, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
reqs = project.get("dependencies", []) + project.get("optional-dependencies", {}).get("test", [])
missing = []
for req in reqs:  # presence only: pip sorts out versions when it installs
    name = re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0]
    try:
        md.distribution(name)
    except md.PackageNotFoundError:
        missing.append(name)
try:  # the project itself, installed editable from *this* checkout
    url = json.loads(md.distribution("zramfs").read_text("direct_url.json") or "{}").get("url", "")
    if os.path.realpath(url.removeprefix("file://")) != repo:
        missing.append("zramfs(installed from %s)" % (url or "elsewhere"))
except md.PackageNotFoundError:
    missing.append("zramfs")
# the compiled build (setup.py), where this machine can compile it and nobody asked for pure
import shutil, sysconfig
if os.environ.get("ZRAMFS_PURE_PYTHON", "") in ("", "0") and not all(
        os.path.exists(os.path.join(repo, pkg, "_compiled.json")) for pkg in ("allocator", "zramfs")):
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) and os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")):
        missing.append("compiled modules")
print(" ".join(missing))
PY
}

pip_install() {
    local extra=()
    # Debian's own python3 refuses pip installs (PEP 668) unless told otherwise
    if "$PY" -c 'import sys,sysconfig,os; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"),"EXTERNALLY-MANAGED")) else 1)'; then
        extra+=(--break-system-packages)
    fi
    "$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore "${extra[@]}" "$@"
}

install_python() {
    local missing
    missing="$(python_missing)"
    if [ -n "$missing" ]; then
        log "installing the project (pip install -e '.[test]'; missing: $missing)"
        pip_install -e "${REPO}[test]"
    fi
}

install_deps() {
    if [ -n "${ZRAMFS_NO_INSTALL:-}" ]; then return 0; fi
    install_system
    ensure_fuse_device
    install_python
}

run_check() {  # NAME CMD...: one log line; the tool's own output only when it fails
    local name="$1" out rc t0="$SECONDS"
    shift
    out="$("$@" 2>&1)" && rc=0 || rc=$?
    if [ "$rc" = 0 ]; then
        log "$name: ok ($((SECONDS - t0))s)"
        return 0
    fi
    printf '%s\n' "$out" >&2
    log "$name: FAILED (exit $rc, $((SECONDS - t0))s): $*"
    return 1
}

lint() {  # ruff and mypy from the interpreter's environment (the test extra installs both)
    if ! "$PY" -c 'import ruff, mypy' 2>/dev/null; then
        log "lint: ruff or mypy is not installed for $PY (pip install -e '.[lint]'; ZRAMFS_NO_LINT=1 skips)"
        exit 1
    fi
    local failed=()
    run_check "ruff check" "$PY" -m ruff check . || failed+=("ruff check")
    # concise: one line per file to reformat (the fix is `ruff format FILE`), not the whole diff
    run_check "ruff format --check" "$PY" -m ruff format --check --output-format concise . \
        || failed+=("ruff format")
    run_check "mypy" "$PY" -m mypy || failed+=("mypy")
    if [ "${#failed[@]}" -gt 0 ]; then
        local IFS=,
        log "lint failed (${failed[*]}): fix the findings above before the suite runs (ZRAMFS_NO_LINT=1 skips the checks for a local run)"
        exit 1
    fi
}

if [ "${1:-}" = "--deps-only" ]; then
    install_deps
    exit 0
fi

install_deps

if [ -z "${ZRAMFS_NO_LINT:-}" ]; then
    lint
fi

# In CI the FUSE tests must run, not skip: check the prerequisites up front and tell the tests
# (tests that honour ZRAMFS_REQUIRE_FUSE=1 fail instead of skipping when FUSE is unusable).
if [ "${CI:-}" = "true" ]; then
    export ZRAMFS_REQUIRE_FUSE=1
    problems=()
    [ -c /dev/fuse ] || problems+=("/dev/fuse missing")
    command -v fusermount3 >/dev/null 2>&1 || command -v fusermount >/dev/null 2>&1 || problems+=("no fusermount")
    "$PY" -c 'import importlib; import sys
for m in ("mfusepy", "fuse"):
    try:
        importlib.import_module(m); sys.exit(0)
    except (ImportError, OSError):
        pass
sys.exit(1)' || problems+=("no usable FUSE binding (mfusepy/fusepy + libfuse)")
    if [ "${#problems[@]}" -gt 0 ]; then
        log "FUSE is not usable in CI: ${problems[*]}"
        exit 1
    fi
fi

# The builds: the compiled one where the install made it, and the pure sources.
installed="$(cd "$REPO" && env -u ZRAMFS_PURE_PYTHON "$PY" -c 'import allocator
from allocator import buildmode
print((allocator.build_mode() + " " + (buildmode.why_pure("allocator") or "")).strip())' 2>/dev/null || echo unknown)"
if [ "${installed%% *}" = compiled ]; then
    log "allocator build: compiled (mypyc)"
    default_builds="compiled pure"
elif [ "${installed%% *}" = pure ] && [ -n "${installed#pure}" ]; then
    log "allocator build: pure Python only, as the compiled one is unusable:${installed#pure}"
    default_builds="pure"
else
    log "allocator build: pure Python only (the install compiled nothing: no C compiler or Python headers, or mypyc failed; pip install -v -e . says why)"
    default_builds="pure"
    if [ "${CI:-}" = "true" ] && command -v gcc >/dev/null 2>&1 \
        && "$PY" -c 'import os,sys,sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
        log "CI: gcc and the Python headers are here, so the compiled build must be too"
        exit 1
    fi
fi
# The device (zramfs's compiled modules) has a build of its own (setup.py compiles each package
# on its own): say which, and in CI require it compiled wherever the allocator is.
device="$(cd "$REPO" && env -u ZRAMFS_PURE_PYTHON "$PY" -c 'import zramfs
from allocator import buildmode
print((zramfs.build_mode() + " " + (buildmode.why_pure("zramfs") or "")).strip())' 2>/dev/null || echo unknown)"
log "device build: $device"
if [ "${CI:-}" = "true" ] && [ "${installed%% *}" = compiled ] && [ "${device%% *}" != compiled ]; then
    log "CI: the allocator compiled, so the device must have too"
    exit 1
fi
if [ -n "${ZRAMFS_PURE_PYTHON:-}" ] && [ "${ZRAMFS_PURE_PYTHON}" != 0 ]; then
    default_builds="pure"
fi
builds="${ZRAMFS_TEST_BUILDS:-$default_builds}"

# A hung FUSE request must not eat CI's 90 minutes silently: cap each pass (default 60 min).
limit="${ZRAMFS_TEST_TIMEOUT:-3600}"
rc=0
prev=""
for build in $builds; do
    case "$build" in
        compiled) mode=(env -u ZRAMFS_PURE_PYTHON) ;;
        pure) mode=(env ZRAMFS_PURE_PYTHON=1) ;;
        *) log "ZRAMFS_TEST_BUILDS: unknown build '$build' (compiled, pure)"; exit 2 ;;
    esac
    # When both builds run, the pure pass leaves out the tests of code that is interpreted in
    # either build (marker same_in_both_builds: the interleaving explorer on the interpreted
    # locks.py, the benchmark harness), which the compiled pass has run already.
    # ZRAMFS_PURE_FULL=1 (or any pytest arguments) runs the pure pass whole.
    args=("$@")
    if [ "$build" = pure ] && [ "$builds" != pure ] && [ "$#" = 0 ] && [ -z "${ZRAMFS_PURE_FULL:-}" ]; then
        args=(-m "not soak and not same_in_both_builds")
    fi
    # Both cores, which keeps the two passes inside the suite's 10-minute budget: the
    # in-process tests share out over two pytest-xdist workers, while the tests that use the
    # machine (mounts, loop devices, swap, kernel zram) run one after another in one of them
    # (tests/conftest.py, --dist loadgroup).  Not for runs given pytest arguments, nor with
    # ZRAMFS_TEST_SERIAL=1.
    if [ "$#" = 0 ] && [ -z "${ZRAMFS_TEST_SERIAL:-}" ] && [ "$(nproc)" -ge 2 ] \
        && "$PY" -c 'import xdist' 2>/dev/null; then
        args+=(-n 2 --dist loadgroup)
    fi
    # the previous pass's time is logged here, so that pytest's summary stays the last line
    log "${prev}$("$PY" --version 2>&1), $build build; running: $PY -m pytest -q ${args[*]} (time limit ${limit}s)"
    t0="$SECONDS"
    set +e
    timeout --kill-after=30 "$limit" "${mode[@]}" "$PY" -m pytest -q "${args[@]}"
    prc=$?
    set -e
    if [ "$prc" = 124 ] || [ "$prc" = 137 ]; then
        log "pytest did not finish in ${limit}s (exit $prc); FUSE mounts now: $(grep -c ' fuse' /proc/mounts || true)"
    fi
    prev="$build pass: exit $prc in $((SECONDS - t0))s; "
    if [ "$rc" = 0 ]; then rc="$prc"; fi
done
exit "$rc"
