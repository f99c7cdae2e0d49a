package main

import (
	"bytes"
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestDemo runs `make demo`'s program and checks what it printed: each VM
// got its expected address and host name, and the Server reports both.
func TestDemo(t *testing.T) {
	var out bytes.Buffer
	err := run(t.Context(), options{out: &out})
	t.Logf("demo output:\n%s", out.String())
	require.NoError(t, err)
	printed := out.String()
	assert.Regexp(t, `vm-1 02:00:5e:00:00:01: 192\.168\.50\.150 \(pinned\) hostname=vm-1 router=192\.168\.50\.1 dns=192\.168\.50\.53 domain=demo\.internal lease=3600s`, printed)
	assert.Regexp(t, `vm-2 02:00:5e:00:00:02: 192\.168\.50\.1\d\d \(from the pool\) hostname=vm-2 router=192\.168\.50\.1 `, printed)
	assert.Contains(t, printed, "stranger 02:00:5e:00:00:99: no answer")
	assert.Regexp(t, `vm-1 migrated to node-2 \(virt-launcher vm-1-launcher-2\), asked again: 192\.168\.50\.150\n`, printed)
	moved := regexp.MustCompile(`vm-2 restarted with a new MAC 02:00:5e:00:00:22: (\S+) \(before: (\S+)\)`).FindStringSubmatch(printed)
	if assert.NotNil(t, moved, "vm-2's restart is printed") {
		assert.Equal(t, moved[2], moved[1], "a VM keeps its address across a new MAC")
	}
	// Conflict detection (on by default) needs NET_RAW, which Kubernetes
	// gives to root only.
	assert.Contains(t, printed, "as uid 0 with effective capabilities net_bind_service,net_raw, read-only root")
	assert.Regexp(t, `kube-apiserver \(PID \d+\) killed\n\s+hyperdhcpd logged: cannot reach the API`, printed)
	assert.Contains(t, printed, "vm-1 renewed (RENEW to 192.168.50.2) during the outage: ACK 192.168.50.150 for 3600s")
	assert.Regexp(t, `kube-apiserver started again \(PID \d+\)\n\s+hyperdhcpd logged: the API answers again`, printed)
	assert.Regexp(t, `status\.served\.generation 2 \S+ after the patch, from hyperdhcpd PID \d+, the one started above\n\s+vm-1 asked again: 192\.168\.50\.150, DNS 192\.168\.50\.54\n`, printed,
		"a DNS edit is applied by the running hyperdhcpd")
	assert.Regexp(t, `lab\s+lab-bridge\s+192\.168\.50\.2/24\s+2\s+98\s+2\s+2\s+True`, printed, "kubectl get servers: used=2, generation 2 served, Ready")
	assert.Regexp(t, `Normal\s+AddressAssigned\s+.*hyperdhcpd\s+interface lab was given 192\.168\.50\.150`, printed, "kubectl describe vmi shows hyperdhcpd's Event")
	assert.Regexp(t, `192\.168\.50\.150\s+02:00:5e:00:00:01\s+vm-1\s+bound\s+\S+\s+vm:demo/vm-1/lab`, printed, "hyperdhcpd leases list: the lease belongs to the VM")
	assert.Contains(t, printed, "cleaning up")
}
