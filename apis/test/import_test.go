package test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestImportableFromOutside builds a program in a module of its own,
// outside the workspace, that imports the API as another project would
// (a replace to this checkout stands for a tagged version), runs it, and
// checks that neither its packages nor its module graph pull in
// controller-runtime or client-go: apis depends on apimachinery only.
func TestImportableFromOutside(t *testing.T) {
	apis, err := filepath.Abs("..")
	require.NoError(t, err)
	dir := t.TempDir()
	source, err := os.ReadFile(filepath.Join("testdata", "consumer", "main.go.txt"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "main.go"), source, 0o644))

	goCmd := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("go", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "go %s:\n%s", strings.Join(args, " "), out)
		return string(out)
	}
	goCmd("mod", "init", "example.com/consumer")
	goCmd("mod", "edit", "-require", "github.com/hyperdhcp/hyperdhcp/apis@v0.0.0", "-replace", "github.com/hyperdhcp/hyperdhcp/apis="+apis)
	goCmd("mod", "tidy")

	out := goCmd("run", ".")
	assert.Contains(t, out, "valid, lease time 1h0m0s")
	assert.Contains(t, out, "invalid: spec.serverIP")

	for what, listing := range map[string]string{
		"packages":     goCmd("list", "-deps", "."),
		"module graph": goCmd("list", "-m", "all"),
	} {
		assert.NotRegexp(t, `(?m)^(sigs\.k8s\.io/controller-runtime|k8s\.io/client-go|k8s\.io/api)([ /]|$)`, listing,
			"the %s of a program using apis", what)
	}
}
