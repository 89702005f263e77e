#!/usr/bin/env bash
# Builds the test cluster's binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kwok; with --kueue also Kueue's manager; with --minio the MinIO server that
# stands in for S3) from the pinned Go modules into .cache/cluster/bin, and copies the manifests
# they need (kwok's stock Stages and CRDs, Kueue's CRDs and webhooks) from those modules into
# .cache/cluster.
#
# A stamp per part, keyed on its go.mod/go.sum and this script, makes a second run a no-op;
# Go's own build cache makes a rebuild after a small change cheap.
#
# Usage: tests/cluster/build.sh [--kueue] [--minio]   (KILN_CLUSTER_CACHE overrides .cache/cluster)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${KILN_CLUSTER_CACHE:-$root/.cache/cluster}
bin=$out/bin
k8s_version=v1.35.4
# MinIO's main module is built with `go install module@version`: its go.mod has replace
# directives, which a consuming go.mod would ignore. The pseudo-version pins the commit; the Go
# checksum database pins its content.
minio_version=v0.0.0-20260212201848-7aac2a2c5b7c
script="$here/build.sh"

log() { echo "$*" >&2; }

# key PART FILES...: the stamp key of a part.
key() { cat "$@" "$script" | sha256sum | cut -d' ' -f1; }

# fresh STAMP KEY BINARIES...: whether the part is built and current.
fresh() {
  local stamp=$1 want=$2
  shift 2
  [[ -f $stamp && $(<"$stamp") == "$want" ]] || return 1
  for b in "$@"; do [[ -x $bin/$b ]] || return 1; done
}

# copy_from_module MODULE SRC DEST: copy a directory or file out of the module cache.
copy_from_module() {
  local dir
  dir=$(go list -m -f '{{.Dir}}' "$1")
  rm -rf "$3"
  cp -r "$dir/$2" "$3"
  chmod -R u+w "$3"
}

build_control_plane() {
  # The version variables Kubernetes' own build (hack/lib/version.sh) stamps in; without them
  # the binaries report v0.0.0 and kubectl warns about version skew.
  local ldflags="" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=35"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  log "building etcd and Kubernetes $k8s_version control plane (about 8 min cold on 2 cores)..."
  (
    cd "$here"
    go build -ldflags "$ldflags" -o "$bin/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler
    go build -o "$bin/etcd" go.etcd.io/etcd/server/v3
  )
  log "building kwok (about 2 min cold)..."
  (
    cd "$here/kwok"
    go build -o "$bin/kwok" sigs.k8s.io/kwok/cmd/kwok
    copy_from_module sigs.k8s.io/kwok kustomize/stage "$out/stages"
    # Its Logs CRD: the executor's pods get their logs served through it (kubectl logs).
    copy_from_module sigs.k8s.io/kwok kustomize/crd/bases "$out/kwok-crds"
  )
}

build_kueue() {
  log "building Kueue's manager (about 5 min cold on 2 cores)..."
  (
    cd "$here/kueue"
    go build -o "$bin/kueue" sigs.k8s.io/kueue/cmd/kueue
    mkdir -p "$out/kueue"
    copy_from_module sigs.k8s.io/kueue config/components/crd/bases "$out/kueue/crds"
    copy_from_module sigs.k8s.io/kueue config/components/webhook/manifests.yaml \
      "$out/kueue/webhook.yaml"
  )
}

build_minio() {
  log "building MinIO (about 5 min cold on 2 cores)..."
  # -mod applies to a main module only; `go install module@version` has none.
  GOFLAGS= GOBIN="$bin" go install "github.com/minio/minio@$minio_version"
}

with_kueue=0 with_minio=0
for arg in "$@"; do
  case $arg in
    --kueue) with_kueue=1 ;;
    --minio) with_minio=1 ;;
    *) log "build.sh: unknown argument $arg"; exit 2 ;;
  esac
done

base_key=$(key "$here/go.mod" "$here/go.sum" "$here/kwok/go.mod" "$here/kwok/go.sum")
kueue_key=$(key "$here/kueue/go.mod" "$here/kueue/go.sum")
minio_key=$(echo "$minio_version" | key /dev/stdin)
base_fresh=0 kueue_fresh=1 minio_fresh=1
fresh "$out/stamp" "$base_key" etcd kube-apiserver kube-controller-manager kube-scheduler kwok &&
  [[ -d $out/stages && -d $out/kwok-crds ]] && base_fresh=1
if ((with_kueue)); then
  kueue_fresh=0
  fresh "$out/stamp-kueue" "$kueue_key" kueue && [[ -d $out/kueue/crds ]] && kueue_fresh=1
fi

if ((with_minio)); then
  minio_fresh=0
  fresh "$out/stamp-minio" "$minio_key" minio && minio_fresh=1
fi

if ((base_fresh && kueue_fresh && minio_fresh)); then
  log "cluster binaries up to date in $bin"
  exit 0
fi
command -v go >/dev/null || { log "build.sh: Go is needed to build the test cluster"; exit 1; }
mkdir -p "$bin"
# Static binaries, no C toolchain needed; -mod=readonly so a stale go.sum fails loudly.
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly"
start=$SECONDS
if ((!base_fresh)); then
  rm -f "$out/stamp"
  build_control_plane
  echo "$base_key" >"$out/stamp"
fi
if ((!kueue_fresh)); then
  rm -f "$out/stamp-kueue"
  build_kueue
  echo "$kueue_key" >"$out/stamp-kueue"
fi
if ((!minio_fresh)); then
  rm -f "$out/stamp-minio"
  build_minio
  echo "$minio_key" >"$out/stamp-minio"
fi
log "cluster binaries built in $((SECONDS - start)) s into $bin"
