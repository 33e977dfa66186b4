# shellcheck shell=bash
# Shared by scripts/quickstart and scripts/test (sourced, not run).
#
#   ensure_venv EXTRAS    create .venv if missing; pip-install -e ".[EXTRAS]" unless a stamp says
#                         that is already done for the current pyproject.toml
#   ensure_chromium       find Chromium; as root, apt-get install Debian's package if missing
#   ensure_broker_servers as root, apt-get install Debian's rabbitmq-server and redis-server if
#                         missing (tests/servers.py starts them; tests skip without them)
#
# Environment knobs:
#   PYTHON=/path/to/python3.X   the interpreter that creates the venv (default: first python3 >= 3.11)
#   WQNB_VENV=/path/to/venv     where the venv lives (default: <repo>/.venv)
#   WQNB_FORCE_INSTALL=1        ignore the stamp and run pip anyway

WQNB_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WQNB_VENV=${WQNB_VENV:-$WQNB_ROOT/.venv}
WQNB_PY=$WQNB_VENV/bin/python
WQNB_STAMP=$WQNB_VENV/.wqnb-installed

say() { printf '==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# Print the first interpreter that is Python >= 3.11.
find_python() {
  local cand path
  for cand in ${PYTHON:-} python3 python3.13 python3.12 python3.11 python; do
    path=$(command -v "$cand" 2>/dev/null) || continue
    if "$path" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      printf '%s\n' "$path"
      return 0
    fi
  done
  return 1
}

# Succeeds when the stamp is newer than pyproject.toml, lists every extra asked for, and the
# venv imports wqnb from this checkout (not from another clone that shares the venv).
stamp_ok() {
  local extra
  [ -f "$WQNB_STAMP" ] && [ "$WQNB_STAMP" -nt "$WQNB_ROOT/pyproject.toml" ] || return 1
  for extra in ${1//,/ }; do
    grep -qx "$extra" "$WQNB_STAMP" || return 1
  done
  (cd / && "$WQNB_PY" -I - "$WQNB_ROOT/wqnb" <<'PY') >/dev/null 2>&1
import importlib.util, os, sys
spec = importlib.util.find_spec("wqnb")
want = os.path.realpath(sys.argv[1])
locs = list(spec.submodule_search_locations or []) if spec else []
sys.exit(0 if any(os.path.realpath(p) == want for p in locs) else 1)
PY
}

ensure_venv() {
  local extras=$1 base old all
  if [ ! -x "$WQNB_PY" ]; then
    base=$(find_python) || die "wqnb needs Python >= 3.11 and none was found on PATH (tried: ${PYTHON:-} python3 python3.13 python3.12 python3.11 python). Install one, or set PYTHON=/path/to/python3.11"
    say "creating $WQNB_VENV with $base ($("$base" -V 2>&1))"
    "$base" -m venv "$WQNB_VENV" ||
      die "could not create the venv $WQNB_VENV with $base (on Debian: apt-get install python3-venv)"
  fi
  "$WQNB_PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$WQNB_VENV runs $("$WQNB_PY" -V 2>&1), but wqnb needs Python >= 3.11: remove $WQNB_VENV and run this again"

  if [ -z "${WQNB_FORCE_INSTALL:-}" ] && stamp_ok "$extras"; then
    say "wqnb[$extras] already installed in $WQNB_VENV (stamp newer than pyproject.toml; WQNB_FORCE_INSTALL=1 reinstalls)"
    return 0
  fi
  # Keep the extras an earlier, still valid install put there (quickstart then test, say).
  old=""
  if [ -f "$WQNB_STAMP" ] && [ "$WQNB_STAMP" -nt "$WQNB_ROOT/pyproject.toml" ]; then
    old=$(paste -sd, "$WQNB_STAMP")
  fi
  all=$(printf '%s\n' ${extras//,/ } ${old//,/ } | sort -u | paste -sd,)
  say "installing wqnb[$all] (editable) into $WQNB_VENV (a few minutes the first time)"
  rm -f "$WQNB_STAMP"
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$WQNB_PY" -m pip install -q --progress-bar off -e "$WQNB_ROOT[$all]" ||
    die "pip install -e '$WQNB_ROOT[$all]' failed (see pip's message above)"
  printf '%s\n' ${all//,/ } >"$WQNB_STAMP"
}

# apt_update_once WHY: `apt-get update` the first time a script needs a package (WHY says for what).
WQNB_APT_UPDATED=""
apt_update_once() {
  export DEBIAN_FRONTEND=noninteractive
  [ -n "$WQNB_APT_UPDATED" ] && return 0
  apt-get update -qq || die "apt-get update failed (needed to install $1)"
  WQNB_APT_UPDATED=1
}

# Print the path of a Chromium binary, or fail.
chromium_path() {
  local c
  for c in ${WQNB_CHROMIUM:-} chromium chromium-browser /usr/bin/chromium; do
    command -v "$c" 2>/dev/null && return 0
  done
  return 1
}

# Browser tests drive Debian's Chromium through Playwright: never `playwright install`
# (it downloads a browser build, which this project's machines cannot fetch).
ensure_chromium() {
  local path
  if path=$(chromium_path); then
    export WQNB_CHROMIUM=$path
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "Chromium not found: installing Debian's chromium for the browser tests"
    apt_update_once "chromium for the browser tests"
    apt-get install -y -qq chromium fonts-dejavu-core >/dev/null ||
      die "apt-get install chromium fonts-dejavu-core failed (see apt's message above)"
    path=$(chromium_path) || die "apt-get installed chromium, but no chromium binary is on PATH"
    export WQNB_CHROMIUM=$path
    return 0
  fi
  if [ -n "${CI:-}" ]; then
    die "Chromium is missing and this is not root with apt-get, so it cannot be installed; CI needs it for the browser tests"
  fi
  warn "Chromium not found and not root: browser tests will be skipped (install: sudo apt-get install chromium fonts-dejavu-core)"
  return 0
}

# The broker tests run Debian's servers as throwaway processes (tests/servers.py); the packages'
# own services are not started (policy-rc.d) and not used. Not root: warn, the tests skip.
ensure_broker_servers() {
  local missing=()
  [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || command -v rabbitmq-server >/dev/null 2>&1 ||
    missing+=(rabbitmq-server)
  command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian's ${missing[*]} for the broker tests"
    apt_update_once "${missing[*]} for the broker tests"
    # Keep the packages' own services from starting (a RabbitMQ on 5672 for the whole run):
    # a policy-rc.d that says no, only while apt runs, unless the machine has one already.
    local policy=/usr/sbin/policy-rc.d made_policy="" rc=0
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
    fi
    apt-get install -y -qq "${missing[@]}" >/dev/null || rc=$?
    [ -z "$made_policy" ] || rm -f "$policy"
    [ $rc -eq 0 ] || die "apt-get install ${missing[*]} failed (see apt's message above)"
    return 0
  fi
  if [ -n "${CI:-}" ]; then
    die "${missing[*]} missing and this is not root with apt-get, so it cannot be installed; CI needs it for the broker tests"
  fi
  warn "${missing[*]} not found and not root: their broker tests will be skipped (install: sudo apt-get install ${missing[*]})"
  return 0
}
