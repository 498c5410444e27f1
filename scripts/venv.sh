# Sourced by scripts/demo and scripts/test: make sure a project virtualenv exists and holds the
# package, then leave its interpreter in $VENV_PYTHON. Never installs into the system Python
# (Debian's python3 is externally managed, PEP 668).
#
#   VENV    the virtualenv directory (default .venv in the checkout); an existing one is reused
#   PYTHON  the interpreter that creates it (default python3; needs 3.11 or newer)

say() { echo "${0##*/}: $*" >&2; }

# Run a command as root: directly, through sudo, or not at all (returns 1).
as_root() {
  if [ "$(id -u)" -eq 0 ]; then env DEBIAN_FRONTEND=noninteractive "$@"
  elif command -v sudo >/dev/null; then sudo env DEBIAN_FRONTEND=noninteractive "$@"
  else return 1
  fi
}

# Install Debian packages, or say exactly what to install and exit.
apt_install() {
  if ! command -v apt-get >/dev/null || { [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null; }; then
    say "error: missing $*: install them (Debian/Ubuntu: apt-get install $*)${APT_HINT:+, $APT_HINT,} and run this again"
    exit 1
  fi
  say "installing Debian packages: $* (apt-get)"
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

create_venv() {
  local python=${PYTHON:-python3}
  command -v "$python" >/dev/null || { say "error: $python not found; install Python 3.11 or newer"; exit 1; }
  if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    say "error: $python is $("$python" -V 2>&1); failure-predictor needs Python 3.11 or newer (set PYTHON=...)"
    exit 1
  fi
  say "creating virtualenv $VENV with $python ($("$python" -V 2>&1))"
  if ! "$python" -m venv "$VENV" 2>/dev/null; then
    # Debian and Ubuntu ship venv's pip bootstrap (ensurepip) in a separate package.
    rm -rf "$VENV"
    local minor
    minor=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt_install "python$minor-venv"
    "$python" -m venv "$VENV"
  fi
}

# ensure_venv EXTRA: the package (editable, with optional extra) in $VENV, pinned by constraints.txt.
# Skips pip when pyproject.toml and constraints.txt are unchanged since the last install.
ensure_venv() {
  local spec=. extra=${1:-}
  [ -n "$extra" ] && spec=".[$extra]"
  VENV=${VENV:-.venv}
  VENV_PYTHON="$VENV/bin/python"
  if [ -x "$VENV_PYTHON" ] && "$VENV_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    say "reusing virtualenv $VENV"
  else
    create_venv
  fi
  local stamp="$VENV/.failure-predictor-installed${extra:+-$extra}"
  local wanted
  wanted=$(cat pyproject.toml constraints.txt | cksum)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    say "package and dependencies already installed in $VENV"
  else
    say "installing failure-predictor${extra:+ with [$extra]} into $VENV (pip, pinned by constraints.txt; ~1 min the first time)"
    "$VENV_PYTHON" -m pip install --quiet --disable-pip-version-check -c constraints.txt -e "$spec"
    echo "$wanted" >"$stamp"
  fi
}

# ensure_kernels [required]: the kernels compiled ahead of time into the package (python -m
# exporter.precompile: ~30 s the first time, skipped while kernels.py is unchanged). Needs C and
# C++ compilers and Python's headers: with "required" they are installed from Debian when missing and a
# failed build stops the script; otherwise the daemon compiles its kernels with numba on first use.
ensure_kernels() {
  local required=${1:-} need=() include
  include=$("$VENV_PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
  command -v gcc >/dev/null || need+=(gcc libc6-dev)
  command -v g++ >/dev/null || need+=(g++)  # numba's runtime, linked into the module, is C++
  [ -f "$include/Python.h" ] || need+=("$("$VENV_PYTHON" -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}-dev")')")
  if [ ${#need[@]} -gt 0 ]; then
    if [ -z "$required" ]; then
      say "no ${need[*]}: the kernels compile on first use instead (numba; ~10 s and ~130 MB more)"
      return 0
    fi
    apt_install "${need[@]}"
  fi
  if ! "$VENV_PYTHON" -m exporter.precompile >&2; then
    [ -n "$required" ] && exit 1
    say "the kernels compile on first use instead (numba; ~10 s and ~130 MB more)"
  fi
}
