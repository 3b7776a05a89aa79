#!/usr/bin/env bash
# Run the whole test suite: unit tests, in-process tests, and integration tests against real
# Prosody and ejabberd with real strophe.js / xmpp.js clients.
#
#   bash scripts/test.sh [extra args for cargo nextest run / cargo test]
#
# Installs what the integration tests need when it is missing (a fresh CI machine has only the
# Rust toolchain, Node 20 and npm):
#   - Debian/Ubuntu packages prosody, lua-event, openssl, ejabberd, haproxy (apt-get, as root or via sudo);
#     their system services are kept from starting during the install: tests start their own
#     instances on free loopback ports, each in its own temp dir.
#   - the pinned npm clients in tests/js (npm ci from package-lock.json).
#   - Debian chromium and the pinned converse.js + playwright-core in tests/browser (browser test).
# Then runs `cargo nextest run --no-fail-fast` (plus doc tests) if cargo-nextest is installed,
# else `cargo test --no-fail-fast`. Any failure makes this script fail.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[test.sh] $*" >&2; }
die() { echo "[test.sh] ERROR: $*" >&2; exit 1; }

# ---------------------------------------------------------------- system packages
missing=()
command -v prosody >/dev/null 2>&1 || missing+=(prosody lua-event)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# HAProxy: the round-robin load balancer of tests/cluster.rs (Debian puts it in /usr/sbin).
command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
if ! command -v erl >/dev/null 2>&1 || ! { command -v ejabberdctl >/dev/null 2>&1 || [[ -x /usr/sbin/ejabberdctl ]]; }; then
  missing+=(ejabberd)
fi
if ((${#missing[@]} > 0)); then
  log "installing ${missing[*]} with apt-get"
  command -v apt-get >/dev/null 2>&1 || die "no apt-get: install ${missing[*]} yourself (Debian/Ubuntu package names)"
  SUDO=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to install ${missing[*]}"
    SUDO=(sudo -n)
  fi
  # Keep the packages' own services from starting (ports 5222/5280 taken, an ejabberd postinst
  # failing on a busy machine): policy-rc.d exit 101 = "action forbidden".
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod 755 "$policy"
    made_policy=1
  fi
  restore_policy() { if ((made_policy)); then "${SUDO[@]}" rm -f "$policy"; fi; }
  trap restore_policy EXIT
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  restore_policy
  trap - EXIT
  command -v prosody >/dev/null 2>&1 || die "prosody still missing after apt-get install"
  command -v erl >/dev/null 2>&1 || die "erl (ejabberd) still missing after apt-get install"
  [[ -x /usr/sbin/haproxy ]] || command -v haproxy >/dev/null 2>&1 || die "haproxy still missing after apt-get install"
fi
log "prosody $(dpkg-query -W -f '${Version}' prosody 2>/dev/null || echo '?'); ejabberd $(dpkg-query -W -f '${Version}' ejabberd 2>/dev/null || echo '?'); haproxy $(dpkg-query -W -f '${Version}' haproxy 2>/dev/null || echo '?')"
command -v setpriv >/dev/null 2>&1 || log "note: no setpriv (util-linux); servers of a killed test process may outlive it"

# ---------------------------------------------------------------- Python tools
# kubernetes-validate (PyPI) validates deploy/ against the bundled Kubernetes schemas, offline;
# it brings PyYAML, which tests/ops_deploy.rs also uses.
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  log "pip install kubernetes-validate"
  python3 -m pip install -q --disable-pip-version-check kubernetes-validate || die "pip install kubernetes-validate failed"
  hash -r
fi

# ---------------------------------------------------------------- npm clients
command -v node >/dev/null 2>&1 || die "node is missing: the client tests need Node 20 (and npm)"
command -v npm >/dev/null 2>&1 || die "npm is missing: the client tests need Node 20 and npm"
node_major=$(node -p 'process.versions.node.split(".")[0]')
((node_major >= 20)) || die "Node $(node --version) is too old: the client tests need Node 20 or later"
if [[ ! -f tests/js/node_modules/.package-lock.json || tests/js/package-lock.json -nt tests/js/node_modules/.package-lock.json ]]; then
  log "npm ci in tests/js"
  (cd tests/js && npm ci --no-audit --no-fund)
fi

# ---------------------------------------------------------------- browser test (tests/browser_converse.rs)
# Debian's chromium (playwright cannot download a browser here; the test drives /usr/bin/chromium)
# and the pinned converse.js + playwright-core in tests/browser.
if [[ ! -x /usr/bin/chromium ]]; then
  log "installing chromium with apt-get"
  command -v apt-get >/dev/null 2>&1 || die "no apt-get: install Debian's chromium (/usr/bin/chromium) yourself"
  SUDO_B=()
  [[ $(id -u) -eq 0 ]] || SUDO_B=(sudo -n)
  # Try the package lists already there first; update them only when that fails.
  "${SUDO_B[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium ||
    { "${SUDO_B[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
      "${SUDO_B[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } ||
    die "apt-get install chromium failed"
fi
if [[ ! -f tests/browser/node_modules/.package-lock.json || tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]]; then
  log "npm ci in tests/browser"
  (cd tests/browser && npm ci --no-audit --no-fund)
fi

# ---------------------------------------------------------------- dependency policy (deny.toml)
# Licenses, banned crates, crates.io only. Advisories are left out (the RustSec database cannot
# be fetched here). A missing cargo-deny is installed; if that is impossible the step is skipped
# with a warning, but a policy violation fails the run.
if ! cargo deny --version >/dev/null 2>&1; then
  log "cargo install cargo-deny --locked"
  cargo install cargo-deny --locked || log "WARNING: cargo-deny could not be installed; dependency policy NOT checked"
fi
if cargo deny --version >/dev/null 2>&1; then
  log "cargo deny check bans licenses sources"
  cargo deny --log-level error check bans licenses sources || die "cargo deny: dependency policy violated (see deny.toml)"
fi

# ---------------------------------------------------------------- tests
if cargo nextest --version >/dev/null 2>&1; then
  log "cargo nextest run --no-fail-fast $*"
  status=0
  cargo nextest run --no-fail-fast "$@" || status=$?
  # nextest does not run doc tests.
  log "cargo test --doc"
  cargo test --doc || status=$?
  ((status == 0)) || die "tests failed (exit $status)"
else
  log "cargo-nextest not installed; cargo test --no-fail-fast $*"
  cargo test --no-fail-fast "$@" || die "tests failed"
fi
log "all tests passed"
