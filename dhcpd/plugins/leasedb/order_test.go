package leasedb

import (
	"context"
	"math/rand/v2"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// slowStore delays every write a little, so concurrent commits queue and
// a write that left memory early can land after one that left it late.
type slowStore struct{ Store }

func (s slowStore) Apply(ctx context.Context, changes []Change) error {
	time.Sleep(time.Duration(rand.IntN(400)) * time.Microsecond)
	return s.Store.Apply(ctx, changes)
}

// TestACKedLeasesSurviveARestartUnderConcurrentMoves uses the plugin only
// through packets: clients move between addresses (renewing into a free
// address moves a client), release and come back, all at once, while the
// store is slow. Then the server restarts from the database: every lease
// whose ACK was the client's last word must be there, bound to that client.
// A deletion of a client's old row written after another client's ACKed
// row for the same address would lose that lease, and after the restart the
// address could be handed out twice.
func TestACKedLeasesSurviveARestartUnderConcurrentMoves(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	inner, err := OpenSQLite(path)
	require.NoError(t, err)
	store := slowStore{inner}
	opts := Options{Server: serverPrefix, Pools: []Range{pool("192.168.50.100", "192.168.50.111")}, Store: store}
	db, err := New(context.Background(), opts)
	require.NoError(t, err)
	handle := func(req *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
		resp, err := dhcpv4.NewReplyFromRequest(req)
		require.NoError(t, err)
		resp.UpdateOption(dhcpv4.OptMessageType(dhcpv4.MessageTypeAck))
		if req.MessageType() == dhcpv4.MessageTypeDiscover {
			resp.UpdateOption(dhcpv4.OptMessageType(dhcpv4.MessageTypeOffer))
		}
		out, _ := db.Handler4(req, resp)
		return out
	}

	const workers, clientsPerWorker = 6, 2
	var mu sync.Mutex
	holds := map[string]netip.Addr{} // client MAC -> address of its last ACK, if that was its last word
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 99))
			for range 300 {
				hw := net.HardwareAddr{0x02, 0, 0x5e, 0x77, byte(w), byte(r.IntN(clientsPerWorker))}
				target := net.IPv4(192, 168, 50, byte(100+r.IntN(12)))
				var reply *dhcpv4.DHCPv4
				switch r.IntN(3) {
				case 0:
					reply = handle(packet(t, dhcpv4.MessageTypeRequest, hw, dhcpv4.WithClientIP(target)))
				case 1:
					mu.Lock()
					ip, ok := holds[hw.String()]
					mu.Unlock()
					if ok {
						handle(packet(t, dhcpv4.MessageTypeRelease, hw, dhcpv4.WithClientIP(net.IP(ip.AsSlice()))))
						mu.Lock()
						delete(holds, hw.String())
						mu.Unlock()
					}
					continue
				default:
					if offer := handle(packet(t, dhcpv4.MessageTypeDiscover, hw)); offer != nil {
						reply = handle(packet(t, dhcpv4.MessageTypeRequest, hw,
							dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr)),
							dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IP(serverAddr.AsSlice())))))
					}
				}
				if reply != nil && reply.MessageType() == dhcpv4.MessageTypeAck {
					ip, _ := netip.AddrFromSlice(reply.YourIPAddr.To4())
					mu.Lock()
					holds[hw.String()] = ip
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	require.NoError(t, db.Close())

	reopened, err := OpenSQLite(path)
	require.NoError(t, err)
	defer reopened.Close()
	rows, err := reopened.Load(context.Background())
	require.NoError(t, err)
	stored := map[netip.Addr]Lease{}
	for _, r := range rows {
		stored[r.IP] = r
	}
	require.NotEmpty(t, holds)
	for hw, ip := range holds {
		row := stored[ip]
		assert.True(t, row.State == StateBound && row.MAC.String() == hw,
			"%s was ACKed to %s, but after the restart the database says %s for %s", ip, hw, row.State, row.MAC)
	}
}
