#!/usr/bin/env bash
# Installs the system packages Reposure uses, if any are missing (Debian/Ubuntu; root or
# sudo). With --tests, also what the test suite and the benchmark run: the reference
# registry, skopeo, umoci, podman, buildah, openssl, curl, attr, bc, procps, rsync, zip, unzip,
# Python's venv, and oras-py in the venv target/oras-venv. kubectl is taken as the machine
# has it (Debian's kubernetes-client is 1.20, which speaks SPDY, not WebSocket, to exec).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
need() { command -v "$2" >/dev/null 2>&1 || packages+=("$1"); }
need fuse3 fusermount3
if [[ "${1:-}" == "--tests" ]]; then
    need docker-registry docker-registry
    need skopeo skopeo
    need umoci umoci
    need podman podman
    need buildah buildah
    need openssl openssl
    need curl curl
    need attr getfattr
    need bc bc
    need procps pgrep
    need rsync rsync
    need zip zip
    need unzip unzip
    need python3 python3
    if command -v python3 >/dev/null && ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        packages+=(python3-venv)
    fi
fi
if ((${#packages[@]})); then
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo="sudo"
    echo "installing: ${packages[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
fi
# oras-py, a peer client for the tests and a baseline for the benchmark, in a venv.
if [[ ${1:-} == --tests ]]; then
    venv=target/oras-venv
    if [[ ! -x $venv/bin/python ]] || ! $venv/bin/python -c 'import oras' 2>/dev/null; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet oras==0.2.43
    fi
fi
