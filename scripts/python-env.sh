#!/usr/bin/env bash
# Creates (once) or reuses the Python test environment for the bindings, then prints its path.
#
# PyPI's torch wheel is about 5 GB installed (CUDA libraries included) and takes minutes to
# install, so the venv lives in the user's cache directory, keyed by the torch version, and is
# rebuilt only when missing or incomplete. Everything else (maturin, pytest, numpy) is small.
#
#   venv=$(scripts/python-env.sh)        # prints the venv directory on stdout, logs on stderr
#
# Override the torch version with DS_TORCH_VERSION, the cache root with XDG_CACHE_HOME.
set -euo pipefail

torch_version=${DS_TORCH_VERSION:-2.15.0}
python=${PYTHON:-python3}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/data-sparsifier
venv=$cache/venv-torch-$torch_version
stamp=$venv/.complete

if [[ ! -f $stamp ]]; then
    echo "python-env: creating $venv (torch $torch_version; the first time takes several minutes)" >&2
    rm -rf "$venv"
    mkdir -p "$cache"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --upgrade pip >&2
    # --no-cache-dir: pip's wheel cache would hold a second copy of torch (GBs).
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir \
        "torch==$torch_version" "maturin>=1.5,<2" "pytest>=7" "numpy>=1.24" >&2
    # Written last, so an interrupted install is redone next time instead of half-used.
    touch "$stamp"
else
    echo "python-env: reusing $venv" >&2
fi
echo "$venv"
