#!/usr/bin/env bash
# Builds the Python package's wheel, installs it into the cached torch venv and runs its pytest
# suite (crates/data-sparsifier-py/tests). Used by .ci/run; runnable by hand.
#
# Exit status: pytest's, except that "no tests collected" (pytest's 5) is a failure too.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=$(scripts/python-env.sh)
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT

# --release: the kernels are what the tests and users run; -i pins the venv's interpreter.
"$venv/bin/maturin" build --release --quiet -m crates/data-sparsifier-py/Cargo.toml \
    -i "$venv/bin/python" --out "$wheels" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps \
    "$wheels"/data_sparsifier-*.whl >&2

# Run from the tests folder against the installed wheel, not the source tree.
set +e
(cd crates/data-sparsifier-py && "$venv/bin/python" -m pytest -q -p no:cacheprovider tests)
status=$?
set -e
case $status in
    0) ;;
    5) echo "python-tests: pytest collected no tests" >&2; exit 1 ;;
    *) echo "python-tests: pytest failed (exit $status)" >&2; exit "$status" ;;
esac
