#!/usr/bin/env bash
# make release-check: what a release would do, without publishing. From a
# clean clone of HEAD (goreleaser reads the commit through the clone's
# remote): `goreleaser check`, then a snapshot release building the archives
# and checksums for linux/amd64 and linux/arm64 (hyperdhcpd's arm64 build is
# cgo, cross-compiled with Debian's aarch64 gcc), skipping docker (goreleaser
# OSS drives only docker/buildx), SBOMs (syft is not packaged here) and
# signing. Then the images are built from the snapshot's amd64 binaries the
# way `make images` builds them. Results land in bin/release/.
#
# Environment: GORELEASER (the binary).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=hack/lib.sh
source "$repo/hack/lib.sh"
: "${GORELEASER:?set GORELEASER to the goreleaser binary}"
apt_install gcc-aarch64-linux-gnu libc6-dev-arm64-cross jq

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone --quiet "$repo" "$work/hyperdhcp"
cd "$work/hyperdhcp"
"$GORELEASER" check
"$GORELEASER" release --snapshot --clean --skip=docker,sbom,sign --parallelism 1

# ELF machine numbers (e_machine, at byte 18): 62 is x86-64, 183 is AArch64.
declare -A machine=([amd64]=62 [arm64]=183)
for arch in amd64 arm64; do
	archive=$(ls dist/hyperdhcp_*_linux_"$arch".tar.gz)
	mkdir -p "$work/$arch"
	tar -xzf "$archive" -C "$work/$arch"
	for binary in hyperdhcpd hyperdhcp-operator; do
		got=$(od -An -t u2 -j 18 -N 2 "$work/$arch/$binary" | tr -d ' ')
		if [[ $got != "${machine[$arch]}" ]]; then
			echo "release-check: $archive: $binary is for ELF machine $got, not $arch" >&2
			exit 1
		fi
	done
	(cd dist && grep -q " $(basename "$archive")\$" checksums.txt && sha256sum --quiet -c <(grep " $(basename "$archive")\$" checksums.txt))
	echo "release-check: $(basename "$archive") ($(du -h "$archive" | cut -f1)): hyperdhcpd and hyperdhcp-operator for $arch, checksum matches"
done
version=$(jq -r .version dist/metadata.json)
"$work/amd64/hyperdhcpd" --version | grep -q "$version"

rm -rf "$repo/bin/release/dist"
mkdir -p "$repo/bin/release"
cp -r dist "$repo/bin/release/dist"
VERSION=$version REVISION=$(git rev-parse HEAD) BIN=$work/amd64 IMAGES_DIR=$repo/bin/release/images "$repo/hack/images.sh"
