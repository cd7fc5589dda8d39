#!/usr/bin/env bash
# GPU Scribe: the environment for `cargo build --features cuda`.
#
#   source tools/cuda/setup-toolkit.sh        # from the repository root
#   cargo build --release --features cuda
#
# With a CUDA 13 `nvcc` already on PATH (or in $CUDA_HOME/bin, /usr/local/cuda/bin), it uses that
# toolkit and only exports the variables below. Without one, it assembles a CUDA 13.0 build
# toolkit from NVIDIA's PyPI wheels (pip download only, nothing is installed into Python) into
# $GPUSCRIBE_CUDA_PREFIX (default ~/.cache/gpuscribe/cuda13-toolkit; about 800 MB, once):
# nvcc + nvvm (cicc) + headers, the link-time libraries candle's `cuda` feature links against
# (cublas, cublasLt, curand, nvrtc, cudart), and a stub libcuda.so made from cuda.h (the real
# libcuda.so.1 comes with the NVIDIA driver at run time).
#
# Needs: bash, python3 with pip, a C compiler (cc). CUDA_COMPUTE_CAP defaults to 90 (Hopper:
# H100/H200); set it before sourcing for other GPUs (80: A100, 89: L4/RTX 40xx, 120: RTX 50xx).
#
# Running the binary it builds needs the NVIDIA driver (>= 580) and the CUDA 13 runtime
# libraries (libcublas.so.13, libcublasLt.so.13, libcurand.so.10, libcudart.so.13); the wheels'
# copies are in $GPUSCRIBE_CUDA_PREFIX/lib: `export LD_LIBRARY_PATH=$GPUSCRIBE_CUDA_PREFIX/lib`.

_gpuscribe_cuda_main() {
  local prefix="${GPUSCRIBE_CUDA_PREFIX:-$HOME/.cache/gpuscribe/cuda13-toolkit}"
  local wheels="${GPUSCRIBE_CUDA_WHEELS:-$HOME/.cache/gpuscribe/cuda13-wheels}"
  local nvcc_found=""
  if command -v nvcc >/dev/null 2>&1; then
    nvcc_found="$(command -v nvcc)"
  elif [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
    nvcc_found="$CUDA_HOME/bin/nvcc"
  elif [ -x /usr/local/cuda/bin/nvcc ]; then
    nvcc_found=/usr/local/cuda/bin/nvcc
  fi
  if [ -n "$nvcc_found" ]; then
    local root
    root="$(cd "$(dirname "$nvcc_found")/.." && pwd)"
    if ! "$nvcc_found" --version | grep -q "release 13\."; then
      echo "setup-toolkit: $nvcc_found is not CUDA 13 ($("$nvcc_found" --version | tail -1)); candle's cuda feature here is built for CUDA 13" >&2
    fi
    export CUDA_ROOT="$root" CUDA_HOME="$root" CUDA_PATH="$root"
    export PATH="$root/bin:$PATH"
    # Without a driver installed, link against the toolkit's stub libcuda (last, so a real one wins).
    for stubs in "$root/lib64/stubs" "$root/lib/stubs"; do
      if [ -e "$stubs/libcuda.so" ]; then
        export LIBRARY_PATH="${LIBRARY_PATH:+$LIBRARY_PATH:}$stubs"
        break
      fi
    done
    export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
    echo "setup-toolkit: using the toolkit in $root; CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP" >&2
    return 0
  fi

  if [ ! -x "$prefix/bin/nvcc" ] || [ ! -e "$prefix/lib/stubs/libcuda.so" ]; then (
    set -euo pipefail
    command -v python3 >/dev/null || { echo "setup-toolkit: python3 (with pip) is needed" >&2; exit 1; }
    command -v cc >/dev/null || { echo "setup-toolkit: a C compiler (cc) is needed" >&2; exit 1; }
    echo "setup-toolkit: no nvcc found; assembling a CUDA 13.0 toolkit from NVIDIA's wheels in $prefix (once, ~800 MB)" >&2
    mkdir -p "$wheels" "$prefix"
    python3 -m pip download -q --no-deps --only-binary=:all: \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_12_x86_64 \
      --python-version 3.11 -d "$wheels" \
      "nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*" \
      "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-cublas==13.0.*" \
      "nvidia-cuda-nvrtc==13.0.*" "nvidia-curand==10.4.*" >&2
    local tmp
    tmp="$(mktemp -d)"
    for w in "$wheels"/*.whl; do
      python3 -m zipfile -e "$w" "$tmp" >/dev/null
    done
    cp -a "$tmp"/nvidia/cu13/. "$prefix"/
    rm -rf "$tmp"
    chmod +x "$prefix"/bin/* "$prefix"/nvvm/bin/* 2>/dev/null || true
    # The wheels ship versioned libraries only; the linker wants the plain names.
    ( cd "$prefix/lib" && for f in *.so.*; do b="${f%%.so.*}"; [ -e "$b.so" ] || ln -s "$f" "$b.so"; done )
    [ -e "$prefix/lib64" ] || ln -s lib "$prefix/lib64"
    # A stub driver library with every cu* symbol cuda.h names, for the linker only.
    mkdir -p "$prefix/lib/stubs"
    grep -ohE '\bcu[A-Z][A-Za-z0-9_]*\b' "$prefix/include/cuda.h" | sort -u \
      | awk '{print "int " $1 "(void){return 999;}"}' > "$prefix/lib/stubs/libcuda_stub.c"
    cc -shared -fPIC -o "$prefix/lib/stubs/libcuda.so" -Wl,-soname,libcuda.so.1 \
      "$prefix/lib/stubs/libcuda_stub.c"
  ) || { echo "setup-toolkit: failed" >&2; return 1; }
  fi

  export CUDA_ROOT="$prefix" CUDA_HOME="$prefix" CUDA_PATH="$prefix"
  export PATH="$prefix/bin:$PATH"
  export LIBRARY_PATH="$prefix/lib/stubs:$prefix/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
  export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
  export GPUSCRIBE_CUDA_PREFIX="$prefix"
  echo "setup-toolkit: $(nvcc --version | tail -1); CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP" >&2
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  echo "setup-toolkit: source it so the variables reach your shell: source tools/cuda/setup-toolkit.sh" >&2
  _gpuscribe_cuda_main && exit 0 || exit 1
fi
_gpuscribe_cuda_main
