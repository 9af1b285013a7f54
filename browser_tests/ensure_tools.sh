#!/usr/bin/env bash
# Installs what `make test-browser` and `make pdf` need, when it is missing:
#   Debian's chromium (apt-get), the Python playwright client (the [browser] extra; it drives the
#   system chromium, never a downloaded one) and MathJax 3 from npm
#   (into ~/.cache/dpo-companion/mathjax, or use a copy of your own: MATHJAX_DIR=<folder with es5/>;
#   a book built after this finds the copy and serves MathJax itself, see book/_ext/offline_mathjax.py),
#   and a colour emoji font (Debian's fonts-noto-color-emoji) for the status page's check marks.
# Exits non-zero, saying what to do, when something cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MATHJAX_VERSION=3.2.2
# outside the repository: Sphinx would turn the package's README.md files into pages of the book
MATHJAX_PREFIX=${XDG_CACHE_HOME:-$HOME/.cache}/dpo-companion/mathjax

# Runs a command as root only when we are root, or when the user asked for sudo (ALLOW_SUDO=1);
# otherwise prints the command to run and fails, so nothing asks for a password unasked.
as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif [ "${ALLOW_SUDO:-}" = 1 ] && command -v sudo >/dev/null; then
    sudo "$@"
  else
    echo "not root; run as root: sudo $* (or rerun with ALLOW_SUDO=1 to let this script use sudo)" >&2
    return 1
  fi
}

apt_updated=
apt_install() {
  command -v apt-get >/dev/null || return 1
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq || return 1; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if [ -n "${CHROMIUM:-}" ]; then
  command -v "$CHROMIUM" >/dev/null || { echo "error: CHROMIUM=$CHROMIUM is not an executable" >&2; exit 1; }
elif ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  echo "== installing Debian's chromium (apt-get install chromium)"
  apt_install chromium || {
    echo "error: chromium is missing and could not be installed; as root run: apt-get install -y chromium" >&2
    exit 1
  }
fi

if command -v fc-list >/dev/null && ! fc-list | grep -qi emoji; then
  echo "== installing an emoji font (apt-get install fonts-noto-color-emoji)"
  apt_install fonts-noto-color-emoji || {
    echo "error: no emoji font, so the status page's check marks would show as boxes; as root run:" \
         "apt-get install -y fonts-noto-color-emoji" >&2
    exit 1
  }
fi

if ! "$PY" -c "import playwright" 2>/dev/null; then
  echo "== installing the [browser] extra (playwright's Python client; no browser download)"
  "$PY" -m pip install --quiet -e '.[browser]' || {
    echo "error: could not install playwright; run: $PY -m pip install -e '.[browser]'" >&2
    exit 1
  }
fi

if [ -n "${MATHJAX_DIR:-}" ]; then
  [ -f "$MATHJAX_DIR/es5/tex-mml-chtml.js" ] || { echo "error: MATHJAX_DIR=$MATHJAX_DIR has no es5/tex-mml-chtml.js" >&2; exit 1; }
elif [ ! -f "$MATHJAX_PREFIX/node_modules/mathjax/es5/tex-mml-chtml.js" ]; then
  if ! command -v npm >/dev/null; then
    echo "== npm not found; installing Debian's npm to fetch MathJax"
    apt_install npm || {
      echo "error: MathJax 3 is needed to check math offline, and npm is missing; install Node.js/npm," \
           "or put a MathJax 3 copy (with es5/tex-mml-chtml.js) somewhere and set MATHJAX_DIR to it" >&2
      exit 1
    }
  fi
  echo "== installing mathjax@$MATHJAX_VERSION from npm into $MATHJAX_PREFIX"
  mkdir -p "$MATHJAX_PREFIX"
  npm install --prefix "$MATHJAX_PREFIX" --no-audit --no-fund --silent "mathjax@$MATHJAX_VERSION" || {
    echo "error: npm could not install mathjax@$MATHJAX_VERSION into $MATHJAX_PREFIX" >&2
    exit 1
  }
fi
