#!/usr/bin/env bash
# make images: the hyperdhcpd and hyperdhcp-operator images, built offline
# with buildah from the static binaries in bin/ (make build) and the
# Dockerfiles, on a base built here from scratch (no registry is contacted:
# nothing is pulled). Writes OCI archives to IMAGES_DIR and prints their
# sizes. The published images use distroless instead: the Dockerfiles' BASE.
#
# Environment: VERSION, REVISION (full commit), IMAGES_DIR, BIN (binaries).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=hack/lib.sh
source "$repo/hack/lib.sh"
: "${VERSION:?set VERSION}" "${REVISION:?set REVISION}"
IMAGES_DIR=${IMAGES_DIR:-$repo/bin/images}
BIN=${BIN:-$repo/bin}

if [[ $EUID -ne 0 ]]; then
	echo "images: buildah needs root here" >&2
	exit 1
fi
apt_install buildah ca-certificates

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/etc/ssl/certs" "$context/tmp" "$context/bin"
chmod 1777 "$context/tmp"
printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$context/etc/passwd"
printf '%s\n' 'root:x:0:' 'nonroot:x:65532:' >"$context/etc/group"
cp /etc/ssl/certs/ca-certificates.crt "$context/etc/ssl/certs/"
cp "$BIN/hyperdhcpd" "$BIN/hyperdhcp-operator" "$context/bin/"

base=localhost/hyperdhcp-base:$VERSION
buildah build --quiet --pull=never --layers=false -f "$repo/hack/images/Containerfile.base" -t "$base" "$context" >/dev/null

mkdir -p "$IMAGES_DIR"
for image in hyperdhcpd:dhcpd hyperdhcp-operator:operator; do
	name=${image%%:*} dir=${image##*:}
	buildah build --quiet --pull=never --layers=false -f "$repo/$dir/Dockerfile" \
		--build-arg BASE="$base" --build-arg BINARY="bin/$name" \
		--build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" \
		-t "localhost/$name:$VERSION" "$context" >/dev/null
	rm -f "$IMAGES_DIR/$name.tar"
	buildah push --quiet "localhost/$name:$VERSION" "oci-archive:$IMAGES_DIR/$name.tar:$name:$VERSION"
	buildah rmi "localhost/$name:$VERSION" >/dev/null
	printf '%-20s %s (%s)\n' "$name" "$IMAGES_DIR/$name.tar" "$(du -h --apparent-size "$IMAGES_DIR/$name.tar" | cut -f1)"
done
buildah rmi "$base" >/dev/null
