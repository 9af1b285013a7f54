#!/usr/bin/env bash
# Installs what `make test-browser` and `make pdf` need, when it is missing:
#   Debian's chromium (apt-get), the Python playwright client (the [browser] extra; it drives the
#   system chromium, never a downloaded one) and MathJax 3 from npm into .cache/mathjax.
# Exits non-zero, saying what to do, when something cannot be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MATHJAX_VERSION=3.2.2
MATHJAX_DIR=.cache/mathjax

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi
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

if ! "$PY" -c "import playwright" 2>/dev/null; then
  echo "== installing the [browser] extra (playwright's Python client; no browser download)"
  "$PY" -m pip install --quiet -e '.[browser]' || {
    echo "error: could not install playwright; run: $PY -m pip install -e '.[browser]'" >&2
    exit 1
  }
fi

if [ ! -f "$MATHJAX_DIR/node_modules/mathjax/es5/tex-mml-chtml.js" ]; then
  if ! command -v npm >/dev/null; then
    echo "== npm not found; installing Debian's npm to fetch MathJax"
    apt_install npm || {
      echo "error: MathJax 3 is needed to check math offline, and npm is missing; install Node.js/npm," \
           "or put a MathJax 3 copy (with es5/tex-mml-chtml.js) somewhere and set MATHJAX_DIR" >&2
      exit 1
    }
  fi
  echo "== installing mathjax@$MATHJAX_VERSION from npm into $MATHJAX_DIR"
  mkdir -p "$MATHJAX_DIR"
  npm install --prefix "$MATHJAX_DIR" --no-audit --no-fund --silent "mathjax@$MATHJAX_VERSION" || {
    echo "error: npm could not install mathjax@$MATHJAX_VERSION into $MATHJAX_DIR" >&2
    exit 1
  }
fi
