#!/usr/bin/env bash
# Fails when a generated file (deepcopy, CRD, RBAC) does not match what
# `make generate manifests` produces from the current sources. It compares
# against the working tree rather than HEAD so that it also works before a
# commit; on a fresh clone (CI) the two are the same.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

generated=(apis/v1beta1/zz_generated.deepcopy.go deploy/crd deploy/rbac)
snapshot=$(mktemp -d)
trap 'rm -rf "$snapshot"' EXIT
for path in "${generated[@]}"; do
	mkdir -p "$snapshot/$(dirname "$path")"
	cp -r "$path" "$snapshot/$path" 2>/dev/null || true
done

make --no-print-directory generate manifests >/dev/null

stale=0
for path in "${generated[@]}"; do
	if ! diff -ru "$snapshot/$path" "$path"; then
		stale=1
	fi
done
if ((stale)); then
	echo "generated files were stale; they are regenerated now: review and commit them" >&2
	exit 1
fi
echo "generated files are up to date"
