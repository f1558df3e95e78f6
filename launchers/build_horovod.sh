#!/usr/bin/env bash
# Build and install Horovod 0.28.1 (gloo controller, PyTorch ops) into a virtual environment that already has
# torch 2.13 installed. The PyPI sdist asks CMake for C++14, which torch 2.13's headers reject; this raises it to
# C++17 and builds without build isolation so the installed torch is used. 5-11 minutes on 2 cores.
#
#   launchers/build_horovod.sh [PYTHON]        (default .venv/bin/python)
#
# The wheel is kept in $WHEELHOUSE (default ~/.cache/disttrain/wheelhouse) so a second install, from any clone, is
# instant.
set -euo pipefail
PY=${1:-.venv/bin/python}
WHEELHOUSE=${WHEELHOUSE:-$HOME/.cache/disttrain/wheelhouse}
VERSION=0.28.1

if "$PY" -c "import horovod.torch" >/dev/null 2>&1; then
    echo "horovod: already installed ($("$PY" -c 'import horovod; print(horovod.__version__)'))"
    exit 0
fi
mkdir -p "$WHEELHOUSE"
wheel=$(ls "$WHEELHOUSE"/horovod-$VERSION-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
    command -v cmake >/dev/null || "$PY" -m pip install -q cmake
    command -v g++ >/dev/null || { echo "horovod: g++ is required to build Horovod (apt-get install g++)" >&2; exit 1; }
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    "$PY" -m pip download -q --no-deps --no-binary :all: "horovod==$VERSION" -d "$tmp"
    tar xzf "$tmp/horovod-$VERSION.tar.gz" -C "$tmp"
    src="$tmp/horovod-$VERSION"
    sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"
    grep -q 'CMAKE_CXX_STANDARD 17' "$src/horovod/torch/CMakeLists.txt" || {
        echo "horovod: could not raise CMAKE_CXX_STANDARD in $src/horovod/torch/CMakeLists.txt" >&2; exit 1; }
    "$PY" -m pip install -q psutil pyyaml cloudpickle packaging cffi
    HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 \
    HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS=${MAKEFLAGS:--j2} \
        "$PY" -m pip wheel -q --no-build-isolation --no-deps "$src" -w "$WHEELHOUSE"
    wheel=$(ls "$WHEELHOUSE"/horovod-$VERSION-*.whl | head -1)
fi
"$PY" -m pip install -q "$wheel"
"$PY" -c "import horovod.torch as hvd; print('horovod', hvd.__version__ if hasattr(hvd, '__version__') else '', 'gloo built:', hvd.gloo_built())"
