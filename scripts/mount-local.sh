#!/usr/bin/env bash
# Mounts the embedded default: a local OCI image layout, no server needed.
#   scripts/mount-local.sh [MOUNTPOINT] [LAYOUT_DIR]
# Defaults: ./mnt and ./images. Unmount with: fusermount3 -u MOUNTPOINT
set -euo pipefail
cd "$(dirname "$0")/.."
mountpoint=${1:-mnt}
layout=${2:-images}

scripts/install-deps.sh
cargo build --release --quiet --bin reposure-mount
mkdir -p "$mountpoint"
target/release/reposure-mount "oci:$(realpath -m "$layout")" "$mountpoint" -o "log=$(realpath -m target/reposure-mount.log)"
cat <<MSG
Mounted $(realpath "$layout") (an OCI image layout) on $mountpoint. Try:
  mkdir $mountpoint/demo
  cp /etc/os-release $mountpoint/demo/hello      # pushes demo/hello:latest
  cp /etc/hostname $mountpoint/demo/hello:v1     # another tag
  ls -l $mountpoint/demo
  cat $mountpoint/demo/hello
  rm $mountpoint/demo/hello:v1
  skopeo inspect oci:$(realpath "$layout"):demo/hello:latest   # if skopeo is installed
Logs: target/reposure-mount.log. Unmount: fusermount3 -u $mountpoint
MSG
