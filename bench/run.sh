#!/usr/bin/env bash
# Measures the mount against curl on the same blobs, in one run, and prints ratios.
#
#   bench/run.sh [--quick] [--size MIB]
#
# Builds in release mode (--quick uses the debug build and small sizes so CI keeps the script
# working; its figures mean nothing), starts the reference registry on 127.0.0.1, and for
# each way of reaching it (direct, in-process session, exec: surrogate child, and a
# Kubernetes Registry by name through the emulated API server's exec endpoint) times
#   cat  of a cold file through the mount  vs  curl GET of the same blob
#   cp   of a file into the mount, until close() returns  vs  curl POST+PUT of the same bytes
# and, for the Kubernetes way, the same bytes streamed raw through the same exec connection
# (kube-exec-raw) as a second baseline, and the WebSocket messages a GiB costs each way
# (counted by the emulated API server's exec endpoint).
# then warm re-reads, random reads, listings (1001 tags, 100,000 tags, 1000 repositories), many small
# files against skopeo and oras-py loops, parallel readers, and peak memory of the mount
# and the surrogate. Each figure is the best of REPS runs (machines here are noisy).
set -euo pipefail
cd "$(dirname "$0")/.."

size_mib=1024
profile=release
reps=3
many=1000       # small files, and repositories to list
huge=100000     # tags of one repository to list
sample=20       # baseline runs of skopeo and oras, timed per file
memory_mib=4096 # copied in and out for the memory case
while (($#)); do
    case $1 in
        --quick) size_mib=32; profile=debug; reps=1; many=50; huge=2000; sample=3; memory_mib=64 ;;
        --size) size_mib=$2; shift ;;
        *) echo "usage: bench/run.sh [--quick] [--size MIB]" >&2; exit 2 ;;
    esac
    shift
done

scripts/install-deps.sh --tests
# The registry keeps every blob pushed: about 22 times the size at the end, with the memory
# case's image among them.
need_mib=$((size_mib * 22 + memory_mib))
free_mib=$(df -m --output=avail /var/tmp | tail -1)
if ((free_mib < need_mib)); then
    echo "bench: needs about $need_mib MiB free in /var/tmp, has $free_mib; use --size" >&2
    exit 1
fi
if [[ $profile == release ]]; then
    cargo build --release --quiet --bins
else
    cargo build --quiet --bins
fi
bin=target/$profile

work=$(mktemp -d /var/tmp/reposure-bench.XXXXXX)
cleanup() {
    local status=$?
    if ((status != 0)); then
        # Keep what says why: the logs of the mounts and the registry.
        mkdir -p /var/tmp/reposure-bench-failed
        cp "$work"/*.log /var/tmp/reposure-bench-failed/ 2>/dev/null || true
        echo "bench: failed; logs kept in /var/tmp/reposure-bench-failed" >&2
    fi
    fusermount3 -u "$work/mnt" 2>/dev/null || true
    [[ -n ${registry_pid:-} ]] && kill "$registry_pid" 2>/dev/null || true
    [[ -n ${cluster_PID:-} ]] && kill "$cluster_PID" 2>/dev/null || true
    [[ -n ${serve_pid:-} ]] && kill "$serve_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port
cat > "$work/registry.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $work/registry
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do curl -sf "$url/v2/" >/dev/null && break; sleep 0.1; done

# The emulated cluster: a Registry "bench" whose surrogate pod is the real surrogate.
coproc cluster { "$bin/reposure-emulated-cluster" "$url"; }
read -r kubeconfig pod <&"${cluster[0]}"
# exec_traffic VAR: sets VAR to "STDIN_MESSAGES STDIN_BYTES STDOUT_MESSAGES STDOUT_BYTES" so
# far (not through $(...): a subshell does not have the coprocess's descriptors).
exec_traffic() {
    local line
    echo traffic >&"${cluster[1]}"
    read -r line <&"${cluster[0]}"
    printf -v "$1" '%s' "$line"
}
# per_gib BEFORE AFTER FIELD: messages per GiB of one direction (FIELD 1: stdin, 3: stdout)
# between two exec_traffic readings.
per_gib() {
    awk -v b="$1" -v a="$2" -v f="$3" 'BEGIN {
        split(b, x, " "); split(a, y, " ")
        bytes = y[f + 1] - x[f + 1]
        printf "%.0f\n", (bytes > 0 ? (y[f] - x[f]) * 1073741824 / bytes : 0) }'
}

head -c "$((size_mib * 1024 * 1024))" /dev/urandom >"$work/data.bin"
digest=sha256:$(sha256sum "$work/data.bin" | cut -d' ' -f1)

# elapsed COMMAND...: wall seconds of one run.
elapsed() {
    local start end
    start=$(date +%s.%N)
    "$@" >/dev/null || { echo "bench: failed: $*" >&2; return 1; }
    end=$(date +%s.%N)
    echo "$end - $start" | bc
}
# best SECONDS...: the smallest.
best() { printf '%s\n' "$@" | sort -g | head -1; }

curl_get() { curl -sf -o /dev/null "$url/v2/bench/raw/blobs/$digest"; }
# A verified download, as the mount makes every whole read: the same GET through the
# fastest SHA-256 on the machine.
curl_get_verified() {
    curl -sf "$url/v2/bench/raw/blobs/$digest" | openssl dgst -sha256 | grep -q "${digest#sha256:}"
}
curl_put() {
    local location
    location=$(curl -sf -i -X POST "$url/v2/bench/raw/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:" {print $2}')
    case $location in http*) ;; *) location=$url$location ;; esac
    curl -sf -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' -T "$work/data.bin" "$location&digest=$digest"
}
curl_put
gets=() puts=() verified_gets=()
for _ in $(seq "$reps"); do
    gets+=("$(elapsed curl_get)")
    verified_gets+=("$(elapsed curl_get_verified)")
    puts+=("$(elapsed curl_put)")
done
t_curl_get=$(best "${gets[@]}")
t_curl_get_verified=$(best "${verified_gets[@]}")
t_curl_put=$(best "${puts[@]}")

# skopeo copy of an equivalent image: the same file as a single-layer image in a local OCI
# layout (made through an oci: mount), copied into the registry. Each run copies a layer made
# for it (the tar header's time differs) into a new repository, so that neither the registry
# nor skopeo's blob-info cache can skip the upload.
mkdir -p "$work/layout-mnt"
skopeo_puts=()
for i in $(seq "$reps"); do
    "$bin/reposure-mount" "oci:$work/layout" "$work/layout-mnt" -o "log=$work/layout.log"
    mkdir -p "$work/layout-mnt/bench"
    cp "$work/data.bin" "$work/layout-mnt/bench/file$i"
    fusermount3 -u "$work/layout-mnt"
    skopeo_puts+=("$(elapsed skopeo copy --quiet --dest-tls-verify=false \
        "oci:$work/layout:bench/file$i:latest" "docker://127.0.0.1:$port/skopeo/big$i:latest")")
    rm -rf "$work/layout"
    sleep 1
done
t_skopeo_put=$(best "${skopeo_puts[@]}")

# mount_as WAY [OPTIONS]: mounts the registry the way WAY says on $mountpoint.
mountpoint=$work/mnt
mkdir -p "$mountpoint"
mount_as() {
    local options=log=$work/$1.log${2:+,$2}
    case $1 in
        direct) "$bin/reposure-mount" "$url" "$mountpoint" -o "$options" ;;
        session) "$bin/reposure-mount" "$url" "$mountpoint" -o "$options,transport=session" ;;
        exec) "$bin/reposure-mount" "exec:$PWD/$bin/reposure-surrogate serve --stdio --registry $url" "$mountpoint" -o "$options" ;;
        kubernetes) "$bin/reposure-mount" bench "$mountpoint" -o "$options,kubeconfig=$kubeconfig" ;;
    esac
    mkdir -p "$mountpoint/bench"
}
unmount() { fusermount3 -u "$mountpoint" 2>/dev/null || true; }

# Memory, measured first (it needs the most disk: the spool and the registry each hold
# $memory_mib MiB), printed last: $memory_mib MiB in (cp) and out (cat) through an exec: surrogate, then the peak
# resident memory of the mount daemon and of the surrogate, from the kernel's high-water mark.
mount_as exec
pid=$(pgrep -f "reposure-mount exec:" | head -1)
surrogate=$(pgrep -P "$pid" -f "reposure-surrogate serve" | head -1)
blocks=$((memory_mib / size_mib))
for _ in $(seq "$blocks"); do cat "$work/data.bin"; done | cp /dev/stdin "$mountpoint/bench/memory"
cat "$mountpoint/bench/memory" >/dev/null
mount_hwm=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status")
surrogate_hwm=$(awk '/VmHWM/ { print $2 }' "/proc/$surrogate/status")
unmount
# Nothing of it is needed again: the registry keeps the blob, but the spool file is gone.

printf '%-34s %10s %10s %8s %s\n' case "ours MiB/s" "base MiB/s" ratio goal
echo "(baseline: curl of the same blob, unless the case names another)"
row() { # NAME OURS_SECONDS CURL_SECONDS GOAL
    awk -v n="$1" -v o="$2" -v c="$3" -v s="$size_mib" -v g="$4" \
        'BEGIN { printf "%-34s %10.0f %10.0f %7.2fx %s\n", n, s / o, s / c, c / o, g }'
}
declare -A cat_seconds cp_seconds
for way in direct session exec kubernetes; do
    cps=() cats=()
    for _ in $(seq "$reps"); do
        mount_as "$way"
        exec_traffic before
        cps+=("$(elapsed cp "$work/data.bin" "$mountpoint/bench/file")")
        exec_traffic after
        unmount
        if [[ $way == kubernetes ]]; then cp_stdin_per_gib=$(per_gib "$before" "$after" 1); fi
        # A fresh mount has no page cache: the read is cold on our side (the registry's
        # own file cache is warm, as it is for curl).
        mount_as "$way"
        exec_traffic before
        cats+=("$(elapsed cat "$mountpoint/bench/file")")
        exec_traffic after
        unmount
        if [[ $way == kubernetes ]]; then cat_stdout_per_gib=$(per_gib "$before" "$after" 3); fi
    done
    t_cp=$(best "${cps[@]}")
    t_cat=$(best "${cats[@]}")
    cat_seconds[$way]=$t_cat
    cp_seconds[$way]=$t_cp
    row "cat 1 file ($way)" "$t_cat" "$t_curl_get" ">= 0.8x (0.7x via surrogate)"
    row "cat 1 file ($way) vs verified curl" "$t_cat" "$t_curl_get_verified" "(curl | openssl sha256: the same check)"
    row "cp 1 file until close() ($way)" "$t_cp" "$t_curl_put" ">= 0.7x (0.5x via surrogate)"
    row "cp 1 file ($way) vs skopeo copy" "$t_cp" "$t_skopeo_put" "(skopeo copy of the same file as an image)"
done
# The exec connection itself: the same bytes raw through kube's client and the emulated
# exec endpoint, with no session protocol.
raw_reads=() raw_writes=()
for _ in $(seq "$reps"); do
    raw_reads+=("$("$bin/kube-exec-raw" "$kubeconfig" "$pod" read "$work/data.bin" | cut -d' ' -f2)")
    raw_writes+=("$("$bin/kube-exec-raw" "$kubeconfig" "$pod" write "$work/data.bin" | cut -d' ' -f2)")
done
row "cat (kubernetes) vs raw exec" "${cat_seconds[kubernetes]}" "$(best "${raw_reads[@]}")" ">= 0.8x raw exec"
row "cp (kubernetes) vs raw exec" "${cp_seconds[kubernetes]}" "$(best "${raw_writes[@]}")" ">= 0.6x raw exec"
# ratio NAME NUMERATOR_SECONDS DENOMINATOR_SECONDS GOAL: a speed ratio of two of our own.
ratio() {
    awk -v n="$1" -v a="$2" -v b="$3" -v g="$4" 'BEGIN { printf "%-34s %29.2fx %s\n", n, a / b, g }'
}
ratio "cat: exec vs in-process session" "${cat_seconds[session]}" "${cat_seconds[exec]}" ">= 0.75x"
ratio "cat: kubernetes vs direct" "${cat_seconds[direct]}" "${cat_seconds[kubernetes]}" "(what the cluster path costs a read)"
ratio "cp: kubernetes vs direct" "${cp_seconds[direct]}" "${cp_seconds[kubernetes]}" "(what the cluster path costs a push)"
printf '%-34s %30s %s\n' "exec messages/GiB, cp (stdin)" "$cp_stdin_per_gib" "<= 16384"
printf '%-34s %30s %s\n' "exec messages/GiB, cat (stdout)" "$cat_stdout_per_gib" "<= 16384 (the server frames stdout: 32 KiB, as a kubelet)"

# Pushing an image of the same bytes into the cluster's registry, three ways, against the
# raw exec write: skopeo copy through `reposure registry serve` (the localhost endpoint), cp
# of its image archive into the Kubernetes mount, and `reposure image push`. Each run pushes
# a layer made for it (see the skopeo baseline above) to a new repository.
serve_home=$work/serve-home
mkdir -p "$serve_home/run"
HOME=$serve_home XDG_RUNTIME_DIR=$serve_home/run "$bin/reposure" registry serve bench \
    --kubeconfig "$kubeconfig" --listen 127.0.0.1:0 -o json >"$work/serve.json" 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 300); do [[ -s $work/serve.json ]] && break; sleep 0.1; done
endpoint=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["listen"])' "$work/serve.json")
endpoint_pushes=() archive_cps=() image_pushes=()
for i in $(seq "$reps"); do
    "$bin/reposure-mount" "oci:$work/layout" "$work/layout-mnt" -o "log=$work/layout.log"
    mkdir -p "$work/layout-mnt/bench"
    cp "$work/data.bin" "$work/layout-mnt/bench/file$i"
    fusermount3 -u "$work/layout-mnt"
    endpoint_pushes+=("$(HOME=$serve_home XDG_RUNTIME_DIR=$serve_home/run elapsed skopeo copy --quiet \
        --preserve-digests "oci:$work/layout:bench/file$i:latest" "docker://$endpoint/endpoint/big$i:latest")")
    skopeo copy --quiet --preserve-digests "oci:$work/layout:bench/file$i:latest" "oci-archive:$work/image.tar:archive/big$i:latest"
    rm -rf "$work/layout"
    mount_as kubernetes
    archive_cps+=("$(elapsed cp "$work/image.tar" "$mountpoint/bench/archive$i")")
    unmount
    image_pushes+=("$(elapsed "$bin/reposure" --kubeconfig "$kubeconfig" image push bench "pushed/big$i" "$work/image.tar")")
    rm -f "$work/image.tar"
done
kill "$serve_pid" 2>/dev/null || true
wait "$serve_pid" 2>/dev/null || true
t_raw_write=$(best "${raw_writes[@]}")
row "skopeo copy via endpoint vs raw exec" "$(best "${endpoint_pushes[@]}")" "$t_raw_write" ">= 0.8x raw exec"
row "cp archive into mount vs raw exec" "$(best "${archive_cps[@]}")" "$t_raw_write" "(the Kubernetes mount)"
row "reposure image push vs raw exec" "$(best "${image_pushes[@]}")" "$t_raw_write" "(the same session)"
row "skopeo via endpoint vs skopeo direct" "$(best "${endpoint_pushes[@]}")" "$t_skopeo_put" "(what the cluster path costs skopeo)"

# Bytes the registry sent for blob GETs, from its access log.
blob_bytes() {
    awk '/"GET \/v2\/[^ ]*\/blobs\// { split($0, q, "\""); split(q[3], f, " "); sum += f[2] } END { printf "%.0f\n", sum }' "$work/registry.log"
}

mount_as direct
pid=$(pgrep -f "reposure-mount $url $mountpoint" | head -1)
# Warm re-read: the second cat of a file reads the kernel's page cache.
cat "$mountpoint/bench/file" >/dev/null
t_warm=$(best "$(elapsed cat "$mountpoint/bench/file")" "$(elapsed cat "$mountpoint/bench/file")")
t_local=$(best "$(elapsed cat "$work/data.bin")" "$(elapsed cat "$work/data.bin")")
row "warm re-read (vs local disk)" "$t_warm" "$t_local" ">= 0.5x local disk; >= 2 GB/s"
unmount

# Random 4 KiB reads of a cold file: bytes fetched per read, and latency.
mount_as direct
before=$(blob_bytes)
python3 - "$mountpoint/bench/file" "$size_mib" >"$work/random.txt" <<'PY'
import os, random, sys, time
path, size = sys.argv[1], int(sys.argv[2]) * 1024 * 1024
fd = os.open(path, os.O_RDONLY)
times = []
random.seed(7)
for _ in range(100):
    offset = random.randrange(0, size - 4096)
    start = time.perf_counter()
    os.pread(fd, 4096, offset)
    times.append(time.perf_counter() - start)
times.sort()
print(f"{times[49] * 1000:.1f}")
PY
after=$(blob_bytes)
awk -v b="$((after - before))" -v p50="$(cat "$work/random.txt")" \
    'BEGIN { printf "%-34s %9.0f KiB/read, p50 %s ms %s\n", "random 4 KiB reads (100, cold)", b / 100 / 1024, p50, "<= 1024 KiB, p50 <= 20 ms" }'
unmount

# Listing a repository with 1000 tags: ls, ls -l (cold and warm), against curl of the
# tag list.
manifest=$(curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' "$url/v2/bench/file/manifests/latest")
printf '%s' "$manifest" >"$work/manifest.json"
seq 1000 | xargs -P 16 -I{} curl -sf -o /dev/null -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary @"$work/manifest.json" "$url/v2/bench/file/manifests/t{}"
t_curl_tags=$(elapsed curl -sf "$url/v2/bench/file/tags/list")
# The least a cold ls -l can cost: every tag's manifest, 16 at a time from one curl.
for i in latest $(seq -f 't%g' 1000); do
    printf 'url = "%s/v2/bench/file/manifests/%s"\noutput = "/dev/null"\n' "$url" "$i"
done >"$work/manifests.curl"
t_curl_manifests=$(elapsed curl -sf --no-progress-meter --parallel --parallel-max 16 \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json' -K "$work/manifests.curl")
mount_as direct
t_ls_cold=$(elapsed ls "$mountpoint/bench")
t_ls_warm=$(elapsed ls "$mountpoint/bench")
unmount
# A TTL longer than the cold listing takes, so the second one is warm.
mount_as direct metadata_ttl=60
t_lsl_cold=$(elapsed ls -l "$mountpoint/bench")
t_lsl_warm=$(elapsed ls -l "$mountpoint/bench")
awk -v c="$t_ls_cold" -v w="$t_ls_warm" -v lc="$t_lsl_cold" -v lw="$t_lsl_warm" -v curl="$t_curl_tags" -v m="$t_curl_manifests" 'BEGIN {
    printf "%-34s %8.0f ms (curl of the tag list %.0f ms) %s\n", "ls 1001 tags, cold", c * 1000, curl * 1000, "<= 1 s"
    printf "%-34s %8.0f ms %s\n", "ls 1001 tags, warm", w * 1000, "<= 20 ms"
    printf "%-34s %8.0f ms (%.1fx cold ls) %s\n", "ls -l 1001 tags, cold", lc * 1000, lc / c, "<= 3x cold ls"
    printf "%-34s %8.0f ms (%.2fx) %s\n", "  1001 manifests by curl, 16 at once", m * 1000, m / lc, "(the registry'"'"'s floor for a cold ls -l)"
    printf "%-34s %8.0f ms %s\n", "ls -l 1001 tags, warm (ttl 60)", lw * 1000, "<= 20 ms"
}'
unmount

# A repository with $huge tags: ls and ls -l, cold and warm, against the registry's own
# time to list them (curl of the tag list) and to serve every manifest (16 at a time), and
# the mount's peak memory. The tags are written into the registry's storage as it stores a
# tag (one link file each, beside the first tag's): $huge manifest PUTs would take an hour.
tags=$work/registry/docker/registry/v2/repositories/bench/file/_manifests/tags
link=$(cat "$tags/latest/current/link")
hex=${link#sha256:}
python3 - "$tags" "$link" "$hex" "$huge" <<'PY'
import os, sys
tags, link, hex, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
for i in range(count):
    tag = os.path.join(tags, f"h{i:06d}")
    for sub in ("current", f"index/sha256/{hex}"):
        os.makedirs(os.path.join(tag, sub), exist_ok=True)
        with open(os.path.join(tag, sub, "link"), "w") as f:
            f.write(link)
PY
t_curl_huge=$(elapsed curl -sf -o /dev/null "$url/v2/bench/file/tags/list")
for i in $(seq -f 'h%06g' 0 $((huge - 1))); do
    printf 'url = "%s/v2/bench/file/manifests/%s"\noutput = "/dev/null"\n' "$url" "$i"
done >"$work/huge.curl"
t_curl_huge_manifests=$(elapsed curl -sf --no-progress-meter --parallel --parallel-max 16 \
    -H 'Accept: application/vnd.oci.image.manifest.v1+json' -K "$work/huge.curl")
mount_as direct metadata_ttl=3600
t_huge_cold=$(elapsed ls "$mountpoint/bench")
t_huge_warm=$(elapsed ls "$mountpoint/bench")
pid=$(pgrep -f "reposure-mount $url $mountpoint" | head -1)
hwm_ls=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status")
t_huge_l_cold=$(elapsed ls -l "$mountpoint/bench")
t_huge_l_warm=$(elapsed ls -l "$mountpoint/bench")
hwm_lsl=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status")
unmount
awk -v c="$t_huge_cold" -v w="$t_huge_warm" -v lc="$t_huge_l_cold" -v lw="$t_huge_l_warm" -v curl="$t_curl_huge" -v m="$t_curl_huge_manifests" -v n="$huge" -v h="$hwm_ls" -v hl="$hwm_lsl" 'BEGIN {
    printf "%-34s %8.0f ms (curl of the tag list %.0f ms, %.2fx) %s\n", "ls " n " tags, cold", c * 1000, curl * 1000, c / curl, ""
    printf "%-34s %8.0f ms %s\n", "ls " n " tags, warm", w * 1000, ""
    printf "%-34s %8.0f ms (%.0f ms by curl, 16 at once: %.2fx) %s\n", "ls -l " n " tags, cold", lc * 1000, m * 1000, lc / m, ""
    printf "%-34s %8.0f ms %s\n", "ls -l " n " tags, warm", lw * 1000, ""
    printf "%-34s %8.0f MiB after ls, %.0f MiB after ls -l %s\n", "peak RSS, " n " tags", h / 1024, hl / 1024, "<= 128 MiB"
}'

# A registry with $many more repositories (many/r1 ... ), made with cross-repository blob
# mounts and manifest PUTs; ls and ls -l of the directory holding them, against curl of the
# raw catalog.
config_digest=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["config"]["digest"])' <"$work/manifest.json")
layer_digest=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["layers"][0]["digest"])' <"$work/manifest.json")
make_repository() {
    local repo=many/r$1
    for blob in "$config_digest" "$layer_digest"; do
        curl -sf -o /dev/null -X POST "$url/v2/$repo/blobs/uploads/?mount=$blob&from=bench/file"
    done
    curl -sf -o /dev/null -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
        --data-binary @"$work/manifest.json" "$url/v2/$repo/manifests/latest"
}
export -f make_repository
export url config_digest layer_digest work
seq "$many" | xargs -P 16 -I{} bash -c 'make_repository {}'
# Every page of the catalog (the registry serves at most 1000 names a page).
curl_catalog() {
    local next="/v2/_catalog?n=1000"
    while [[ -n $next ]]; do
        next=$(curl -sf -i "$url$next" | tr -d '\r' |
            awk 'tolower($1)=="link:" { sub(/^[^<]*</, ""); sub(/>.*/, ""); print }')
    done
}
t_curl_catalog=$(elapsed curl_catalog)
# The least a cold ls of them can cost: the catalog, then every repository's tag list (a
# file's name depends on its repository's tags), 16 at a time from one curl.
curl_catalog_and_tags() {
    curl_catalog
    for i in $(seq "$many"); do
        printf 'url = "%s/v2/many/r%s/tags/list"\noutput = "/dev/null"\n' "$url" "$i"
    done >"$work/tags.curl"
    curl -sf --no-progress-meter --parallel --parallel-max 16 -K "$work/tags.curl"
}
t_curl_tag_lists=$(elapsed curl_catalog_and_tags)
mount_as direct metadata_ttl=60
t_repos_cold=$(elapsed ls "$mountpoint/many")
t_repos_warm=$(elapsed ls "$mountpoint/many")
unmount
mount_as direct metadata_ttl=60
t_repos_l_cold=$(elapsed ls -l "$mountpoint/many")
t_repos_l_warm=$(elapsed ls -l "$mountpoint/many")
unmount
awk -v c="$t_repos_cold" -v w="$t_repos_warm" -v lc="$t_repos_l_cold" -v lw="$t_repos_l_warm" -v curl="$t_curl_catalog" -v t="$t_curl_tag_lists" -v n="$many" 'BEGIN {
    printf "%-34s %8.0f ms (curl of the catalog %.0f ms) %s\n", "ls " n " repositories, cold", c * 1000, curl * 1000, "<= 1 s"
    printf "%-34s %8.0f ms (%.2fx) %s\n", "  catalog and " n " tag lists by curl", t * 1000, t / c, "(the registry'"'"'s floor for a cold ls)"
    printf "%-34s %8.0f ms %s\n", "ls " n " repositories, warm", w * 1000, "<= 20 ms"
    printf "%-34s %8.0f ms (%.1fx cold ls) %s\n", "ls -l " n " repositories, cold", lc * 1000, lc / c, "<= 3x cold ls"
    printf "%-34s %8.0f ms %s\n", "ls -l " n " repositories, warm", lw * 1000, "<= 20 ms"
}'

# Many small files: cp -r of $many files of 4 KiB into the mount, against pushing the same
# number of images one by one with skopeo (registry to registry, so skopeo does the least
# work it can) and with oras-py (one Python process, one push per file). The baselines are
# timed over $sample files and compared per file.
mkdir -p "$work/small"
for i in $(seq "$many"); do head -c 4096 /dev/urandom >"$work/small/f$i"; done
mount_as direct
t_small=$(elapsed cp -r "$work/small" "$mountpoint/bench/")
unmount
t_skopeo=$(elapsed bash -c "for i in \$(seq $sample); do skopeo copy --quiet --src-tls-verify=false --dest-tls-verify=false docker://127.0.0.1:$port/bench/small/f\$i:latest docker://127.0.0.1:$port/skopeo/f\$i:latest; done")
t_oras=$(elapsed target/oras-venv/bin/python - "127.0.0.1:$port" "$work/small" "$sample" <<'PY'
import os, sys, oras.client
host, directory, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = oras.client.OrasClient(insecure=True)
os.chdir(directory)
for i in range(1, count + 1):
    client.push(files=[f"f{i}"], target=f"{host}/oras/f{i}:latest", disable_path_validation=True)
PY
)
# The least a push can cost on this registry: the same requests the mount makes for each
# file (blob upload POST + PUT for the layer and for the config, manifest PUT), one file
# after another over one kept-alive connection from a bare client.
t_bare=$(elapsed python3 - 127.0.0.1 "$port" "$work/small" "$many" <<'PY'
import hashlib, http.client, json, os, sys
host, port, directory, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
connection = http.client.HTTPConnection(host, port)
def request(method, path, body=b"", headers={}):
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    response.read()
    assert response.status < 300, (method, path, response.status)
    return response
def blob(repository, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    location = request("POST", f"/v2/{repository}/blobs/uploads/").getheader("Location")
    location = location.split(str(port), 1)[-1]
    request("PUT", f"{location}&digest={digest}", data, {"Content-Type": "application/octet-stream"})
    return {"mediaType": "", "digest": digest, "size": len(data)}
for i in range(1, count + 1):
    repository = f"bare/f{i}"
    with open(os.path.join(directory, f"f{i}"), "rb") as f:
        layer = blob(repository, f.read())
    layer["mediaType"] = "application/vnd.oci.image.layer.v1.tar"
    config = blob(repository, json.dumps({"rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}}).encode())
    config["mediaType"] = "application/vnd.oci.image.config.v1+json"
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": config, "layers": [layer]})
    request("PUT", f"/v2/{repository}/manifests/latest", manifest.encode(), {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
PY
)
awk -v o="$t_small" -v s="$t_skopeo" -v r="$t_oras" -v b="$t_bare" -v n="$many" -v k="$sample" 'BEGIN {
    printf "%-34s %8.1f ms/file (skopeo %.0f, oras-py %.0f) %.0fx skopeo, %.0fx oras %s\n", "cp -r " n " files of 4 KiB", o / n * 1000, s / k * 1000, r / k * 1000, (s / k) / (o / n), (r / k) / (o / n), ">= 20x skopeo"
    printf "%-34s %8.1f ms/file (%.2fx) %s\n", "  the same pushes by a bare client", b / n * 1000, b / o, "(the registry'"'"'s floor for sequential pushes)"
}'

# Four readers on four files against one reader.
mount_as direct
for i in 1 2 3 4; do cp "$work/data.bin" "$mountpoint/bench/par$i"; done
unmount
mount_as direct
t_one=$(elapsed cat "$mountpoint/bench/par1")
unmount
mount_as direct
start=$(date +%s.%N)
readers=()
for i in 1 2 3 4; do
    cat "$mountpoint/bench/par$i" >/dev/null &
    readers+=($!)
done
wait "${readers[@]}"
t_four=$(echo "$(date +%s.%N) - $start" | bc)
pid=$(pgrep -f "reposure-mount $url $mountpoint" | head -1)
awk -v one="$t_one" -v four="$t_four" -v s="$size_mib" \
    'BEGIN { printf "%-34s %10.0f %10.0f %7.2fx %s\n", "4 readers vs 1 (aggregate MiB/s)", 4 * s / four, s / one, (4 * s / four) / (s / one), ">= 2x on 2 cores" }'
hwm=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status")
unmount
awk -v k="$hwm" 'BEGIN { printf "%-34s %8.0f MiB %s\n", "peak RSS of the mount (4 readers)", k / 1024, "<= 128 MiB" }'

awk -v m="$mount_hwm" -v s="$surrogate_hwm" -v n="$((blocks * size_mib))" 'BEGIN {
    printf "%-34s %8.0f MiB %s\n", "peak RSS, mount (" n " MiB in+out)", m / 1024, "<= 128 MiB"
    printf "%-34s %8.0f MiB %s\n", "peak RSS, surrogate (same)", s / 1024, "<= 128 MiB"
}'
echo "size ${size_mib} MiB, best of $reps, $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
