#!/usr/bin/env bash
# offline-bundle.sh: cluda's host libraries (Open MPI, serial HDF5, libpng, libyaml,
# OpenBLAS, zlib and pkg-config) for a machine with no package manager and no network.
#
#   scripts/offline-bundle.sh download [DIR]   on a Debian 12 (bookworm) amd64 machine with
#                                              apt: fetches the .debs into DIR/debs
#   scripts/offline-bundle.sh extract  [DIR]   on the offline machine: unpacks every .deb
#                                              into DIR/prefix (never into /) and writes
#                                              DIR/env.sh with the settings to use it
#   scripts/offline-bundle.sh env      [DIR]   prints those settings again
#
# DIR defaults to .offline in the repository (git-ignored). Copy the whole DIR (or only
# DIR/debs) to the offline machine next to the repository and run `extract` there; it needs
# only dpkg-deb or `ar` + tar, and never needs root. Then:
#
#   source .offline/env.sh
#   cmake -S . -B build -G Ninja $CLUDA_OFFLINE_CMAKE_ARGS   # plus your own options
#
# This also serves users' offline clusters (the same bundle, any glibc >= Debian 12's 2.36:
# Debian 12/13, Ubuntu 22.04+ with a newer glibc is fine, RHEL 9 is not tested). The CUDA
# side (nvcc, cuBLAS, cuDNN, NCCL) is NOT in the bundle: it comes from the CUDA toolkit or
# from PyTorch's nvidia/* Python packages (scripts/gpu-check.sh finds those).
#
# What goes in: the runtime and -dev packages named below, plus the closure of the
# runtime packages' Depends/Pre-Depends (first alternative; virtual packages resolved to a
# provider), minus packages every Debian/Ubuntu base system has (Essential: yes, Priority
# required/important, and the C toolchain's runtime: libc6, libgcc-s1, libstdc++6, ...).
# The -dev packages' own dependencies are followed only into shared-library packages:
# compilers (gfortran for Open MPI's Fortran bindings), other -dev packages and
# documentation (libjs-jquery) are left out, since cluda is C only and links the shared
# libraries. openssh-client (mpirun's remote launcher) is left out too: single-node runs
# need OMPI_MCA_plm_rsh_agent=false (env.sh sets it), multi-node clusters have ssh.
#
# Open MPI is relocated with OPAL_PREFIX; the alternatives symlinks that dpkg's maintainer
# scripts would create (mpicc, mpiexec, libblas.so.3, hdf5.pc) do not exist in the prefix,
# so env.sh names the real files (mpicc.openmpi, mpiexec.openmpi, openblas-pthread/).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mode="${1:-}"
dir="${2:-$here/.offline}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
debs="$dir/debs"
prefix="$dir/prefix"
arch="x86_64-linux-gnu"

# Runtime libraries and their -dev packages (Debian 12 names).
runtime_roots=(
  libopenmpi3 openmpi-bin openmpi-common
  libhdf5-103-1 libhdf5-hl-100
  libpng16-16 libyaml-0-2 libopenblas0-pthread zlib1g
  pkgconf pkgconf-bin libpkgconf3
)
dev_roots=(
  libopenmpi-dev libhdf5-dev libpng-dev libyaml-dev
  libopenblas-dev libopenblas-pthread-dev zlib1g-dev pkg-config
)
# Present on every Debian/Ubuntu system that has a C compiler: the C toolchain and its
# runtime, and the libraries of the minimal base (apt, dpkg, coreutils, systemd's libudev).
# (Essential and Priority required/important packages are also skipped where the apt
# metadata says so; Debian 12's Packages files mark most libraries "optional", so the list
# below does the real work.)
base_skip=(
  libc6 libc6-dev libc-dev-bin linux-libc-dev libcrypt1 libcrypt-dev libgcc-s1 libstdc++6
  gcc-12-base libgomp1 libatomic1 libquadmath0 libasan8 libubsan1 libtsan2 liblsan0 libitm1
  gcc gcc-12 cpp cpp-12 g++ g++-12 binutils libbinutils libctf0 libgprofng0 libgcc-12-dev
  libstdc++-12-dev perl perl-base perl-modules-5.36 libperl5.36 debconf dpkg adduser
  init-system-helpers lsb-base sysvinit-utils
  libzstd1 liblzma5 libudev1 libuuid1 libgmp10 libffi8 libp11-kit0 libtasn1-6 libidn2-0
  libunistring2 libnettle8 libhogweed6 libgnutls30 libdb5.3 libmd0
  # mpirun's remote launcher: single-node runs set OMPI_MCA_plm_rsh_agent=false instead
  openssh-client
  # documentation
  libjs-jquery libjs-jquery-ui libjs-sphinxdoc libjs-underscore
  # hwloc dlopens its plugins and runs without them; they pull libxml2, ICU (9 MB), X11
  # and OpenCL
  libhwloc-plugins
)

usage() {
  sed -n '2,20p' "$0"
  exit 2
}

# ---- download ----

in_list() { # name list...
  local x="$1"
  shift
  for y in "$@"; do [ "$x" = "$y" ] && return 0; done
  return 1
}

# Prints "pkg dep" lines: for every package given, the first alternative of each
# Depends/Pre-Depends group, virtual packages replaced by their first provider.
first_deps() {
  apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
    --no-enhances "$@" 2>/dev/null | awk '
    /^[^ ]/ { pkg = $1; sub(/:.*/, "", pkg); in_alt = 0; want_provider = 0; next }
    /^    / { if (want_provider) { p = $1; sub(/:.*/, "", p); print pkg, p; want_provider = 0 } next }
    /^ [ |](Pre)?Depends:/ {
      alt_line = ($0 ~ /^ \|/)
      dep = $2
      if (!in_alt) {
        if (dep ~ /^</) { want_provider = 1 } else { sub(/:.*/, "", dep); print pkg, dep; want_provider = 0 }
      } else { want_provider = 0 }
      in_alt = alt_line
      next
    }
    { want_provider = 0 }'
}

# Packages that every base system has, among the given ones.
base_packages() {
  apt-cache show --no-all-versions "$@" 2>/dev/null | awk '
    /^Package:/ { p = $2 }
    /^Essential: yes/ { print p }
    /^Priority: (required|important)/ { print p }' | sort -u
}

do_download() {
  command -v apt-get >/dev/null || {
    echo "offline-bundle: download needs apt (Debian 12)" >&2
    exit 1
  }
  local -A selected=() skipped=()
  local s
  for s in "${base_skip[@]}"; do skipped[$s]=1; done
  local queue=("${runtime_roots[@]}" "${dev_roots[@]}")
  for s in "${queue[@]}"; do selected[$s]=1; done
  local -A is_dev_root=()
  for s in "${dev_roots[@]}"; do is_dev_root[$s]=1; done
  while [ ${#queue[@]} -gt 0 ]; do
    local next=() candidates=()
    mapfile -t pairs < <(first_deps "${queue[@]}")
    local line pkg dep
    for line in "${pairs[@]}"; do
      pkg="${line%% *}"
      dep="${line#* }"
      [ -n "${selected[$dep]:-}" ] && continue
      [ -n "${skipped[$dep]:-}" ] && continue
      # from a -dev package, follow only roots and shared-library packages
      if [ -n "${is_dev_root[$pkg]:-}" ] || [[ "$pkg" == *-dev ]]; then
        if ! in_list "$dep" "${runtime_roots[@]}" "${dev_roots[@]}"; then
          # (C only: not HDF5's C++ and Fortran bindings)
          [[ "$dep" == lib* && "$dep" != *-dev && "$dep" != *-doc && "$dep" != libjs-* &&
            "$dep" != *fortran* && "$dep" != *-cpp-* ]] || {
            skipped[$dep]=1
            continue
          }
        fi
      fi
      candidates+=("$dep")
    done
    if [ ${#candidates[@]} -gt 0 ]; then
      local -A base=()
      local b
      while read -r b; do [ -n "$b" ] && base[$b]=1; done < <(base_packages "${candidates[@]}")
      for dep in "${candidates[@]}"; do
        [ -n "${selected[$dep]:-}" ] && continue
        if [ -n "${base[$dep]:-}" ]; then
          skipped[$dep]=1
          continue
        fi
        selected[$dep]=1
        next+=("$dep")
      done
      unset base
    fi
    queue=("${next[@]}")
  done

  mapfile -t packages < <(printf '%s\n' "${!selected[@]}" | sort)
  mkdir -p "$debs"
  rm -f "$debs"/*.deb
  echo "offline-bundle: downloading ${#packages[@]} packages into $debs"
  (cd "$debs" && apt-get download -q "${packages[@]}" >/dev/null)
  printf '%s\n' "${packages[@]}" >"$debs/PACKAGES"
  printf '%s\n' "${!skipped[@]}" | sort >"$debs/SKIPPED"
  (cd "$debs" && find . -maxdepth 1 -name '*.deb' -printf '%f\n' | sort >MANIFEST &&
    sha256sum -- ./*.deb >SHA256SUMS)
  local n size
  n=$(find "$debs" -maxdepth 1 -name '*.deb' | wc -l)
  size=$(du -sh "$debs" | cut -f1)
  echo "offline-bundle: $n .deb files, $size in $debs"
  echo "offline-bundle: left out (base system, compilers, docs): $(tr '\n' ' ' <"$debs/SKIPPED")"
}

# ---- extract ----

unpack_deb() { # deb destination
  if command -v dpkg-deb >/dev/null; then
    dpkg-deb -x "$1" "$2"
    return
  fi
  # no dpkg: a .deb is an ar archive holding data.tar.{xz,zst,gz}
  local tmp
  tmp="$(mktemp -d)"
  (cd "$tmp" && ar x "$1")
  tar -xf "$tmp"/data.tar.* -C "$2"
  rm -rf "$tmp"
}

write_env() {
  local p="$prefix"
  local libdirs="$p/usr/lib/$arch:$p/usr/lib/$arch/openblas-pthread:$p/usr/lib/$arch/hdf5/serial"
  libdirs="$libdirs:$p/usr/lib/$arch/openmpi/lib:$p/lib/$arch"
  cat >"$dir/env.sh" <<EOF
# Generated by scripts/offline-bundle.sh extract: source it before configuring cluda.
export CLUDA_OFFLINE_PREFIX="$p"
export LD_LIBRARY_PATH="$libdirs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export PATH="\$PATH:$p/usr/bin"
# pkg-config: the .pc files say prefix=/usr; the sysroot maps that into the bundle
export PKG_CONFIG_PATH="$p/usr/lib/$arch/pkgconfig:$p/usr/share/pkgconfig"
export PKG_CONFIG_LIBDIR="\$PKG_CONFIG_PATH"
export PKG_CONFIG_SYSROOT_DIR="$p"
# cblas.h of the pthread OpenBLAS
export CPATH="$p/usr/include/$arch/openblas-pthread\${CPATH:+:\$CPATH}"
# Open MPI relocated into the bundle; single-node runs without ssh
export OPAL_PREFIX="$p/usr"
export OMPI_MCA_plm_rsh_agent=false
export CLUDA_OFFLINE_CMAKE_ARGS="-DCMAKE_PREFIX_PATH=$p/usr -DCMAKE_LIBRARY_PATH=$p/usr/lib/$arch/openblas-pthread -DBLAS_LIBRARIES=$p/usr/lib/$arch/openblas-pthread/libopenblas.so -DMPI_C_COMPILER=$p/usr/bin/mpicc.openmpi -DMPIEXEC_EXECUTABLE=$p/usr/bin/mpiexec.openmpi -DHDF5_C_COMPILER_EXECUTABLE=/bin/false -DPKG_CONFIG_EXECUTABLE=$p/usr/bin/pkgconf -DZLIB_ROOT=$p/usr -DPNG_PNG_INCLUDE_DIR=$p/usr/include"
EOF
}

do_extract() {
  if ! ls "$debs"/*.deb >/dev/null 2>&1; then
    echo "offline-bundle: no .deb files in $debs (run download first)" >&2
    exit 1
  fi
  case "$prefix" in
  / | /usr | /usr/*)
    echo "offline-bundle: refusing to extract into $prefix" >&2
    exit 1
    ;;
  esac
  rm -rf "$prefix"
  mkdir -p "$prefix"
  local n=0 deb
  for deb in "$debs"/*.deb; do
    unpack_deb "$deb" "$prefix"
    n=$((n + 1))
  done
  # The .so -> .so.N links of -dev packages are absolute (/usr/lib/...) in a few packages;
  # point them into the prefix.
  local link target
  while IFS= read -r link; do
    target="$(readlink "$link")"
    case "$target" in
    /*) ln -sfn "$prefix$target" "$link" ;;
    esac
  done < <(find "$prefix" -type l)
  # Unversioned names that dpkg's alternatives would provide.
  local ob="$prefix/usr/lib/$arch/openblas-pthread"
  [ -e "$ob/libopenblas.so" ] || ln -sfn libopenblas.so.0 "$ob/libopenblas.so"
  local pc="$prefix/usr/lib/$arch/pkgconfig"
  [ -e "$pc/hdf5.pc" ] || { [ -e "$pc/hdf5-serial.pc" ] && ln -sfn hdf5-serial.pc "$pc/hdf5.pc"; }
  write_env
  echo "offline-bundle: extracted $n packages into $prefix ($(du -sh "$prefix" | cut -f1))"
  do_env
  # Libraries whose dependencies are found neither in the bundle nor on this system.
  # shellcheck disable=SC1091
  (
    source "$dir/env.sh"
    missing=$(find "$prefix" -name '*.so*' -type f -print0 2>/dev/null |
      xargs -0 -r ldd 2>/dev/null | grep 'not found' | sort -u || true)
    if [ -n "$missing" ]; then
      echo "offline-bundle: WARNING: unresolved libraries:"
      echo "$missing"
    else
      echo "offline-bundle: every shared library in the bundle resolves (ldd)"
    fi
  )
}

do_env() {
  [ -f "$dir/env.sh" ] || write_env
  echo "# ---- settings (also in $dir/env.sh: source it) ----"
  cat "$dir/env.sh"
}

case "$mode" in
download) do_download ;;
extract) do_extract ;;
env) do_env ;;
*) usage ;;
esac
