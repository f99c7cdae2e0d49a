// Package version holds build information stamped by the linker:
//
//	-ldflags "-X github.com/hyperdhcp/hyperdhcp/dhcpd/internal/version.Version=v1.2.3 ..."
package version

// Set at build time.
var (
	Version = "dev"
	Commit  = "unknown"
	Date    = "unknown"
)
