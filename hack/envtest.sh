#!/usr/bin/env bash
# Builds the envtest control plane (kube-apiserver and etcd) from pinned Go
# modules, because setup-envtest's release download is not reachable here.
# The binaries land in a per-user cache outside the repository so that every
# clone on the machine (CI included) builds them once. Prints the directory to
# use as KUBEBUILDER_ASSETS on stdout; progress goes to stderr.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
shims=$repo_root/hack/envtest

pinned() { # go.mod module-path: the version a shim requires, in or outside a require block
	awk -v mod="$2" '{ sub(/^require[ \t]+/, "") } $1 == mod { print $2; exit }' "$1"
}
kube_version=$(pinned "$shims/kube-apiserver/go.mod" k8s.io/kubernetes)
etcd_version=$(pinned "$shims/etcd/go.mod" go.etcd.io/etcd/server/v3)
if [[ -z $kube_version || -z $etcd_version ]]; then
	echo "envtest: cannot read the pinned versions from $shims/*/go.mod" >&2
	exit 1
fi

cache_root=${XDG_CACHE_HOME:-$HOME/.cache}/hyperdhcp/envtest
assets=$cache_root/$kube_version
# The stamp covers every input of the build, so editing a shim rebuilds it.
stamp=$(cat "$shims"/*/go.mod "$shims"/*/go.sum "$shims"/*/main.go "${BASH_SOURCE[0]}" | sha256sum | cut -c1-16)

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
flock 9 # two concurrent `make test` runs must not build into the same directory

if [[ -x $assets/kube-apiserver && -x $assets/etcd && "$(cat "$assets/.stamp" 2>/dev/null)" == "$stamp" ]]; then
	echo "$assets"
	exit 0
fi

minor=${kube_version#v1.}
minor=${minor%%.*}
stamp_pkgs=(k8s.io/component-base/version k8s.io/client-go/pkg/version)
ldflags="-s -w -buildid="
for pkg in "${stamp_pkgs[@]}"; do
	# Without these, kube-apiserver reports v0.0.0-master and kubectl refuses to talk to it.
	ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
	ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

staging=$(mktemp -d "$cache_root/.build.XXXXXX")
chmod 755 "$staging"
trap 'rm -rf "$staging"' EXIT

build() { # name
	echo "envtest: building $1 (a cold build of kube-apiserver takes about 10 minutes on 2 cores)" >&2
	(cd "$shims/$1" && GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly \
		go build -trimpath -ldflags "$ldflags" -o "$staging/$1" .)
}
build etcd
build kube-apiserver
echo "$stamp" >"$staging/.stamp"

rm -rf "$assets"
mv "$staging" "$assets"
trap - EXIT
echo "envtest: $kube_version control plane ready in $assets" >&2
echo "$assets"
