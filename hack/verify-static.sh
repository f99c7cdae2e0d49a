#!/usr/bin/env bash
# Checks that each binary is statically linked and runs `version`/`--version`
# in an empty root directory, which is all a scratch or distroless image has.
set -euo pipefail
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
for bin in "$@"; do
	name=$(basename "$bin")
	if file "$bin" 2>/dev/null | grep -q 'dynamically linked'; then
		echo "$name is dynamically linked" >&2
		exit 1
	fi
	cp "$bin" "$root/$name"
	case $name in
	hyperdhcpd) args=(version) ;;
	*) args=(--version) ;;
	esac
	out=$(chroot "$root" "/$name" "${args[@]}")
	echo "$name in an empty root: ${out%%$'\n'*}"
	rm "$root/$name"
done
