#!/usr/bin/env bash
# Renders deploy/default with the operator image IMG and the hyperdhcpd image
# HYPERDHCPD_IMG through a throwaway kustomize overlay (kubectl's built-in
# kustomize has no `edit`), then runs `kubectl ACTION -f -` on the result.
#   hack/deploy.sh render|apply|delete [kubectl flags...]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
action=${1:?usage: deploy.sh render|apply|delete [kubectl flags]}
shift
: "${IMG:?set IMG to the operator image}"
: "${HYPERDHCPD_IMG:?set HYPERDHCPD_IMG to the hyperdhcpd image}"

# The image's tag is what follows the last colon after the last slash.
split_image() { # image -> "name tag"
	local image=$1 last=${1##*/}
	if [[ $last == *:* ]]; then echo "${image%:*} ${image##*:}"; else echo "$image latest"; fi
}
read -r img_name img_tag < <(split_image "$IMG")

overlay=$(mktemp -d "$repo/deploy/.overlay.XXXXXX") # kustomize wants relative resources
trap 'rm -rf "$overlay"' EXIT
cat >"$overlay/kustomization.yaml" <<YAML
resources:
  - ../default
images:
  - name: ghcr.io/hyperdhcp/hyperdhcp-operator
    newName: "$img_name"
    newTag: "$img_tag"
patches:
  - target: {kind: Deployment, name: hyperdhcp-operator}
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {name: HYPERDHCP_OPERATOR_HYPERDHCPD_IMAGE, value: "$HYPERDHCPD_IMG"}
YAML
if [[ $action == render ]]; then
	kubectl kustomize "$overlay"
else
	kubectl kustomize "$overlay" | kubectl "$action" "$@" -f -
fi
