// Package version holds build information stamped by the linker, including
// the hyperdhcpd image the operator deploys by default:
//
//	-ldflags "-X github.com/hyperdhcp/hyperdhcp/operator/internal/version.Version=v1.2.3
//	          -X github.com/hyperdhcp/hyperdhcp/operator/internal/version.HyperdhcpdImage=ghcr.io/hyperdhcp/hyperdhcpd:v1.2.3"
package version

// Set at build time.
var (
	Version         = "dev"
	Commit          = "unknown"
	Date            = "unknown"
	HyperdhcpdImage = "ghcr.io/hyperdhcp/hyperdhcpd:latest"
)
