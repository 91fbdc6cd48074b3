# shellcheck shell=bash
# Sourced, not executed, from the project root on the GPU machine, after tools/gpu-bundle.sh's .gpu/ was
# carried there (tools/gpu-validate.sh does this; by hand: `source tools/gpu-env.sh && .gpu/tests/gpu_ops-*`).
# Returns non-zero, with a message, when the environment cannot be set up. It:
#  - links the build-time project path (.gpu/build-root) to here, so env!("CARGO_MANIFEST_DIR") paths resolve;
#  - puts the bundled CLI where the tests' env!("CARGO_BIN_EXE_hourglass") points (.gpu/cli-path); on the
#    build machine that replaces target/release/hourglass by the same build, stripped;
#  - builds LD_LIBRARY_PATH for cudarc's dynamic loading: the driver's libcuda first (linked from
#    .gpu/driver/), then the folders of cuBLAS, cuBLASLt, NVRTC and cudart. Never a `stubs` folder: the CUDA
#    toolkit's stubs/libcuda.so is a link-time stand-in whose every call fails with CUDA_ERROR_STUB_LIBRARY;
#  - exports HOURGLASS_REQUIRE_GPU=1, so a GPU test fails instead of skipping when no GPU is usable.
# Overrides: HOURGLASS_CUDA_SEARCH (colon-separated folders to search for the libraries; default /) and
# HOURGLASS_LIBCUDA (the driver's libcuda, when the loader cache does not know it).

# True when folder $1 is, or lies in, a `stubs` folder (as written or once links are resolved), or holds a
# libcuda that resolves into one.
_hg_stub_dir() {
  local real f
  real=$(readlink -f -- "$1" 2> /dev/null || printf '%s' "$1")
  case "/$1/" in */stubs/*) return 0 ;; esac
  case "/$real/" in */stubs/*) return 0 ;; esac
  for f in "$1"/libcuda.so*; do
    [ -e "$f" ] || continue
    case "/$(readlink -f -- "$f")" in */stubs/*) return 0 ;; esac
  done
  return 1
}

# The driver's libcuda.so.1: HOURGLASS_LIBCUDA, else the loader cache's, else the usual driver folders'.
# Never a stub.
_hg_driver_libcuda() {
  local c ldconfig
  ldconfig=$(command -v ldconfig || echo /sbin/ldconfig)
  for c in ${HOURGLASS_LIBCUDA:+"$HOURGLASS_LIBCUDA"} \
      $("$ldconfig" -p 2> /dev/null | awk '$1 == "libcuda.so.1" { print $NF }') \
      /usr/lib/x86_64-linux-gnu/libcuda.so.1 /usr/lib64/libcuda.so.1 /usr/local/nvidia/lib64/libcuda.so.1 \
      /usr/lib/wsl/lib/libcuda.so.1; do
    [ -e "$c" ] || continue
    case "/$c:/$(readlink -f -- "$c")" in */stubs/*) continue ;; esac
    readlink -f -- "$c"
    return 0
  done
  return 1
}

_hg_gpu_env() {
  local here build_root cli libcuda d dirs="" roots root
  here=$(pwd -P)
  # The binaries travel packed (tools/gpu-bundle.sh); unpacked once, here.
  if [ -f .gpu/bundle.tgz ] && [ ! -f .gpu/bin/hourglass ]; then
    tar -xzf .gpu/bundle.tgz -C .gpu || return 1
  fi
  if [ ! -f .gpu/build-root ] || [ ! -f .gpu/bin/hourglass ]; then
    echo "gpu-env: no bundle in $here/.gpu: run tools/gpu-bundle.sh where Rust is, and carry .gpu here" >&2
    return 1
  fi

  # CARGO_MANIFEST_DIR of the build -> here. A link left by an earlier bundle elsewhere is re-pointed; a real
  # folder there that is not this checkout would feed the tests its fixtures, so that is an error.
  build_root=$(cat .gpu/build-root)
  if [ -L "$build_root" ]; then
    [ "$(cd -P "$build_root" 2> /dev/null && pwd)" = "$here" ] || ln -sfn "$here" "$build_root" || return 1
  elif [ ! -e "$build_root" ]; then
    mkdir -p "$(dirname "$build_root")" && ln -s "$here" "$build_root" || return 1
  elif [ "$(cd -P "$build_root" && pwd)" != "$here" ]; then
    echo "gpu-env: $build_root (the build's project path) exists and is not $here" >&2
    return 1
  fi

  # CARGO_BIN_EXE_hourglass of the build (under build_root, so now under here) -> the bundled CLI. Removed
  # before the copy: on the build machine it is a hard link to cargo's own copy in target/release/deps.
  cli=$(cat .gpu/cli-path)
  if ! cmp -s "$cli" .gpu/bin/hourglass; then
    mkdir -p "$(dirname "$cli")" && rm -f "$cli" && cp .gpu/bin/hourglass "$cli" || return 1
  fi

  # The driver's libcuda, linked under the names cudarc tries first (libcuda.so, then ... libcuda.so.1), in a
  # folder that leads LD_LIBRARY_PATH: whatever else is on the path or in the loader cache, dlopen finds it.
  rm -rf .gpu/driver
  if libcuda=$(_hg_driver_libcuda); then
    mkdir -p .gpu/driver && ln -s "$libcuda" .gpu/driver/libcuda.so && ln -s "$libcuda" .gpu/driver/libcuda.so.1
    dirs="$here/.gpu/driver"
  else
    echo "gpu-env: WARNING: no driver libcuda.so.1 found (is the NVIDIA driver installed? else set HOURGLASS_LIBCUDA)" >&2
  fi

  # Library folders: those holding cuBLAS, cuBLASLt, NVRTC or cudart, then the inherited LD_LIBRARY_PATH;
  # stubs folders dropped from both. find does not follow links, so no link leads it into a stubs folder.
  IFS=: read -r -a roots <<< "${HOURGLASS_CUDA_SEARCH:-/}"
  while IFS= read -r d; do
    [ -n "$d" ] || continue
    if _hg_stub_dir "$d"; then
      echo "gpu-env: leaving out $d (a stubs folder, or one serving a stub libcuda)" >&2
      continue
    fi
    case ":$dirs:" in *":$d:"*) ;; *) dirs="${dirs:+$dirs:}$d" ;; esac
  done < <(
    for root in "${roots[@]}"; do
      find "$root" -xdev \( -path /proc -o -name stubs \) -prune -o \
        \( -name 'libcublas.so*' -o -name 'libcublasLt.so*' -o -name 'libnvrtc.so*' -o -name 'libcudart.so*' \) \
        -printf '%h\n' 2> /dev/null | sort -u
    done
    tr ':' '\n' <<< "${LD_LIBRARY_PATH:-}"
  )
  export LD_LIBRARY_PATH="$dirs"
  export HOURGLASS_REQUIRE_GPU=1
  echo "gpu-env: libcuda: ${libcuda:-none found}"
  echo "gpu-env: LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  echo "gpu-env: source this file (source tools/gpu-env.sh); run as a command it cannot set your environment" >&2
  exit 2
fi
_hg_gpu_env
_hg_status=$?
unset -f _hg_gpu_env _hg_stub_dir _hg_driver_libcuda
[ "$_hg_status" = 0 ] # the status of `source`
