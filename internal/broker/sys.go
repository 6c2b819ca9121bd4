package broker

import (
	"context"
	"strconv"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/broker/packet"
)

// sysInterval is how often $SYS topics are refreshed.
const sysInterval = 10 * time.Second

// sysOwner marks the broker's own retained $SYS messages: kept in memory
// only, outside every identity's quota.
const sysOwner = "$sys"

// sysLoop publishes broker statistics on $SYS/broker/..., retained, so a
// subscriber (admin only: tacs refuses $SYS to everyone else) sees the
// current values at once.
func (b *Broker) sysLoop(ctx context.Context) {
	b.publishSys()
	t := time.NewTicker(sysInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			b.publishSys()
		}
	}
}

func (b *Broker) publishSys() {
	b.mu.Lock()
	clients, sessions := len(b.conns), len(b.sessions)
	b.mu.Unlock()
	b.retained.mu.RLock()
	retained := b.retained.count
	b.retained.mu.RUnlock()
	now := time.Now()
	for _, kv := range [][2]string{
		{"$SYS/broker/version", "fieldtrust"},
		{"$SYS/broker/uptime", strconv.FormatInt(int64(now.Sub(b.started)/time.Second), 10) + " seconds"},
		{"$SYS/broker/clients/connected", strconv.Itoa(clients)},
		{"$SYS/broker/sessions", strconv.Itoa(sessions)},
		{"$SYS/broker/messages/received", strconv.FormatInt(b.messagesIn.Load(), 10)},
		{"$SYS/broker/messages/sent", strconv.FormatInt(b.messagesOut.Load(), 10)},
		{"$SYS/broker/retained/count", strconv.Itoa(retained)},
	} {
		m := newMessage(kv[0], []byte(kv[1]), 0, true, packet.Properties{}, "", now)
		b.retained.setFor(m, sysOwner, nil)
		b.route(context.Background(), m, nil)
	}
}
