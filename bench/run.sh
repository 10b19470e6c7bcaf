#!/usr/bin/env bash
# `make bench` / `make bench-smoke`: build the peer libraries' environments (once), then run
# the harness in Conveyor's .venv.
#
#   bash bench/run.sh            full run: every workload, backend and peer, 3 iterations,
#                                py-spy profiles; writes bench/results/latest.json and
#                                BENCHMARKS.md (about half an hour on two cores)
#   bash bench/run.sh --smoke    the same cells at tiny sizes (about a minute per backend);
#                                writes bench/results/smoke.json
#   bash bench/run.sh ARGS…      anything else goes to `python -m bench.harness` (see --help)
#
# Peers live outside .venv because their pins conflict with it and with each other
# (bench/requirements/*.txt says why); each requirements file gets bench/.venv-<name>.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
if [ ! -x "$PY" ]; then
    echo "bench/run.sh: $PY is missing; run 'make install' first" >&2
    exit 1
fi
# The peers run on the same interpreter as Conveyor (not the venv's, its base).
BASE=$("$PY" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')

for req in bench/requirements/*.txt; do
    name=$(basename "$req" .txt)
    dir="bench/.venv-$name"
    stamp="$dir/.installed-$(cksum < "$req" | cut -d' ' -f1)"
    [ -f "$stamp" ] && continue
    echo "bench/run.sh: installing $req into $dir"
    if "$BASE" -m venv "$dir" \
        && "$dir/bin/python" -m pip install --quiet --upgrade pip \
        && "$dir/bin/python" -m pip install --quiet -r "$req"; then
        rm -f "$dir"/.installed-*
        touch "$stamp"
    else
        # The harness marks every cell of these libraries "not installed" instead.
        echo "bench/run.sh: warning: could not install $req; its libraries are skipped" >&2
    fi
done

SMOKE=0
for arg in "$@"; do
    [ "$arg" = "--smoke" ] && SMOKE=1
done
if [ "$SMOKE" = 1 ]; then
    exec "$PY" -m bench.harness --output bench/results/smoke.json "$@"
fi
exec "$PY" -m bench.harness --profile --markdown BENCHMARKS.md "$@"
