#!/usr/bin/env bash
# NIJA launcher: makes its own virtual environment, installs NIJA into it, then runs it.
#   ./start.sh            run the daemon (paper mode on the embedded exchange when no keys are set)
#   ./start.sh test [..]  run the whole test suite (extra arguments go to pytest)
#   ./start.sh bench NAME [..]  run bench/NAME.py (client, exchange, copy, master_lag) with the bench extra installed
#   ./start.sh ARGS...    run `nija ARGS...`, e.g. ./start.sh sim --demo
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=.venv
extras="test"
[ "${1:-}" = "bench" ] && extras="test,bench"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "start.sh: NIJA needs Python 3.11 or newer; $PYTHON is $("$PYTHON" --version 2>&1 | head -n 1)." >&2
    echo "start.sh: install it, or point PYTHON at it: PYTHON=python3.11 ./start.sh" >&2
    exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "start.sh: creating virtual environment in $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi

if [ "${1:-}" = "bench" ] && { [ $# -lt 2 ] || [ ! -f "bench/$2.py" ] || [ "$2" = "__init__" ]; }; then
    [ $# -ge 2 ] && echo "start.sh: no benchmark named '$2'" >&2
    echo "usage: ./start.sh bench client|exchange|copy|master_lag [ARGS...]" >&2
    exit 2
fi

# Install only when the package definition changed or an extra is wanted that is not installed yet (a run after a
# benchmark does not reinstall: the bench extra already holds what a run needs).
stamp="$VENV/.nija-installed"
hash="$("$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' pyproject.toml)"
installed="$(cat "$stamp" 2>/dev/null || true)"
installed_extras=""
[ "${installed%% *}" = "$hash" ] && installed_extras="${installed#* }"
missing=""
for extra in ${extras//,/ }; do
    case ",$installed_extras," in *",$extra,"*) ;; *) missing="$missing $extra" ;; esac
done
if [ -n "$missing" ]; then
    extras="$extras${installed_extras:+,$installed_extras}"
    extras="$(echo "$extras" | tr ',' '\n' | sort -u | paste -sd, -)"
    echo "start.sh: installing NIJA and its dependencies ($extras)" >&2
    "$VENV/bin/python" -m pip install -qq --disable-pip-version-check --upgrade pip >&2
    "$VENV/bin/python" -m pip install -qq --disable-pip-version-check -e ".[$extras]" >&2
    echo "$hash $extras" > "$stamp"
fi

if [ "${1:-}" = "test" ]; then
    shift
    exec "$VENV/bin/python" -m pytest "$@"
fi
if [ "${1:-}" = "bench" ]; then
    shift
    name=$1
    shift
    exec "$VENV/bin/python" -m "bench.$name" "$@"
fi
if [ $# -eq 0 ]; then
    set -- run
fi
exec "$VENV/bin/nija" "$@"
