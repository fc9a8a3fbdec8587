# Sourced by scripts/run and scripts/test: installs the system packages the
# build needs (clang and libclang for RocksDB's bindings) when missing.
apt_install() {
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q "$@" >/dev/null 2>&1 \
        || { $sudo apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null && $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q "$@" >/dev/null; }
}

if ! command -v clang >/dev/null 2>&1 || ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1; then
    echo "scripts: installing clang and libclang-dev (RocksDB bindings)" >&2
    apt_install clang libclang-dev
fi

# The shared target directory of .cargo/config.toml, also when a script runs
# from another working directory (cargo looks for its config from there).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/hamail-target}"

# The optimized build: what scripts/run serves and what the benches measure.
# Every binary of the workspace in one build, so that the run command and
# the benches share it (a narrower set of packages can change features and
# rebuild RocksDB). Binaries land in $CARGO_TARGET_DIR/release.
release_build() {
    (cd "$(dirname "${BASH_SOURCE[0]}")/.." && cargo build --release --quiet --workspace --bins)
}
