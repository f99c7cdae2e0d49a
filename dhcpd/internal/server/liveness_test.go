package server

import (
	"context"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/coredhcp/coredhcp/handler"
	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/hyperdhcp/hyperdhcp/dhcpd/plugins/leasedb"
)

func discoverBytes(t *testing.T, i int) []byte {
	p, err := dhcpv4.NewDiscovery(net.HardwareAddr{2, 0, 0, 0, byte(i >> 8), byte(i)})
	require.NoError(t, err)
	return p.ToBytes()
}

// serveOnLoopback runs a server with chain on a loopback socket and
// returns a connection to send it packets.
func serveOnLoopback(t *testing.T, chain []handler.Handler4) (*Server, net.Conn) {
	conn, err := net.ListenPacket("udp4", "127.0.0.1:0")
	require.NoError(t, err)
	srv := New(conn, chain, Options{}, NewMetrics(func() leasedb.Stats { return leasedb.Stats{} }), slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ctx)
	}()
	client, err := net.Dial("udp4", conn.LocalAddr().String())
	require.NoError(t, err)
	t.Cleanup(func() {
		cancel()
		<-done
		client.Close()
		conn.Close()
	})
	return srv, client
}

func TestCheckSeesAStuckPlugin(t *testing.T) {
	release := make(chan struct{})
	stuck := func(req, resp *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, bool) {
		<-release // a deadlocked plugin
		return nil, true
	}
	srv, client := serveOnLoopback(t, []handler.Handler4{stuck})
	t.Cleanup(func() { close(release) }) // runs before the server's cleanup waits for its workers

	time.Sleep(1500 * time.Millisecond)
	require.NoError(t, srv.Check(time.Now(), 3*time.Second), "idle, the heartbeats (every second) keep it alive")

	for i := range 10 {
		_, err := client.Write(discoverBytes(t, i))
		require.NoError(t, err)
	}
	assert.Eventually(t, func() bool { return srv.Check(time.Now(), time.Second) != nil }, 5*time.Second, 100*time.Millisecond,
		"with the receive loop stuck in a plugin, liveness fails")
}

func TestPanickingPluginLosesOnlyItsPacket(t *testing.T) {
	calls := 0
	flaky := func(req, resp *dhcpv4.DHCPv4) (*dhcpv4.DHCPv4, bool) {
		calls++
		if calls == 1 {
			panic("plugin bug")
		}
		return resp, true
	}
	srv := New(nil, []handler.Handler4{flaky}, Options{}, NewMetrics(func() leasedb.Stats { return leasedb.Stats{} }), slog.New(slog.DiscardHandler))
	reply, _ := srv.Handle(discoverBytes(t, 1))
	assert.Nil(t, reply)
	reply, _ = srv.Handle(discoverBytes(t, 2))
	assert.NotNil(t, reply)
}
