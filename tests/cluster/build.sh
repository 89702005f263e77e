#!/usr/bin/env bash
# Builds the test cluster's binaries (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kwok) from the pinned Go modules into .cache/cluster/bin, and copies kwok's
# stock Stage objects into .cache/cluster/stages.
#
# A stamp keyed on the go.mod/go.sum files and this script makes a second run a no-op; Go's own
# build cache makes a rebuild after a small change cheap.
#
# Usage: tests/cluster/build.sh [--kueue]    (KILN_CLUSTER_CACHE overrides .cache/cluster)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${KILN_CLUSTER_CACHE:-$root/.cache/cluster}
bin=$out/bin
k8s_version=v1.35.4
binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

with_kueue=0
if [[ ${1:-} == "--kueue" ]]; then
  with_kueue=1
  binaries+=(kueue)
fi

key_inputs=("$here/go.mod" "$here/go.sum" "$here/kwok/go.mod" "$here/kwok/go.sum" "$0")
if ((with_kueue)); then
  key_inputs+=("$here/kueue/go.mod" "$here/kueue/go.sum")
fi
key=$(cat "${key_inputs[@]}" | sha256sum | cut -d' ' -f1)
stamp=$out/stamp
if ((with_kueue)); then stamp=$out/stamp-kueue; fi

up_to_date() {
  [[ -f $stamp && $(<"$stamp") == "$key" ]] || return 1
  for b in "${binaries[@]}"; do [[ -x $bin/$b ]] || return 1; done
  [[ -d $out/stages ]]
}

if up_to_date; then
  echo "cluster binaries up to date in $bin" >&2
  exit 0
fi

command -v go >/dev/null || { echo "build.sh: Go is needed to build the test cluster" >&2; exit 1; }
rm -f "$stamp"
mkdir -p "$bin"
# Static binaries, no C toolchain needed; -mod=readonly so a stale go.sum fails loudly.
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly"

# The version variables Kubernetes' own build (hack/lib/version.sh) stamps in; without them the
# binaries report v0.0.0 and kubectl warns about version skew.
ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=35"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

start=$SECONDS
echo "building etcd and Kubernetes $k8s_version control plane (about 8 min cold on 2 cores)..." >&2
(
  cd "$here"
  go build -ldflags "$ldflags" -o "$bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler
  go build -o "$bin/etcd" go.etcd.io/etcd/server/v3
)
echo "building kwok (about 2 min cold)..." >&2
(
  cd "$here/kwok"
  go build -o "$bin/kwok" sigs.k8s.io/kwok/cmd/kwok
  rm -rf "$out/stages"
  cp -r "$(go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)/kustomize/stage" "$out/stages"
  chmod -R u+w "$out/stages"
)
if ((with_kueue)); then
  echo "building kueue (about 5 min cold)..." >&2
  (
    cd "$here/kueue"
    go build -o "$bin/kueue" sigs.k8s.io/kueue/cmd/kueue
    rm -rf "$out/kueue-config"
    cp -r "$(go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)/config/components/crd" "$out/kueue-crds"
    chmod -R u+w "$out/kueue-crds"
  )
fi
echo "$key" >"$stamp"
echo "cluster binaries built in $((SECONDS - start)) s into $bin" >&2
