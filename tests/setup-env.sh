# Sourced by tests/run and sim/demo: make .venv (or $TOWER_VENV) with the project
# installed, and make sure mosquitto is there for the broker tests.
VENV="${TOWER_VENV:-$PWD/.venv}"
PYTHON="${PYTHON:-python3}"

need_root_apt() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
    else
        echo "missing: $* (install it with: sudo apt-get install $*)" >&2
        return 1
    fi
}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "Python 3.11 or newer is needed ($PYTHON is $("$PYTHON" -V 2>&1))" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
        rm -rf "$VENV"
        need_root_apt python3-venv
        "$PYTHON" -m venv "$VENV"
    fi
fi
stamp="$VENV/.tower-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e '.[dev]'
    touch "$stamp"
fi
if [ "${TOWER_NEED_MOSQUITTO:-1}" = 1 ] && ! command -v mosquitto >/dev/null \
    && [ ! -x /usr/sbin/mosquitto ]; then
    need_root_apt mosquitto
fi
export PATH="$PATH:/usr/sbin"
