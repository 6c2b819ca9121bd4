package cluster

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// TestEnginePortRefusesNetworkClients: the node's NATS-protocol listener
// (loopback) is a real port a local process can reach. A NATS client
// there is refused by the hook, with no token, with a wrong one, and even
// with the engine client's own token (the pipe is what makes the engine
// client; the token alone is not enough): it never reaches the JetStream
// API that reads the sessions or deletes retained messages.
func TestEnginePortRefusesNetworkClients(t *testing.T) {
	e := newEnv(t)
	n := e.startCluster(t, 1)[0]
	url := n.s.ClientURL()
	for _, tc := range []struct {
		name string
		opts []nats.Option
	}{
		{"no token", nil},
		{"wrong token", []nats.Option{nats.Token("not-the-token")}},
		{"the engine client's token", []nats.Option{nats.Token(n.auth.engine.token)}},
		{"the engine client's name and token", []nats.Option{nats.Token(n.auth.engine.token), nats.Name("fieldtrust-limits")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc, err := nats.Connect(url, append(tc.opts, nats.MaxReconnects(0))...)
			if err == nil {
				defer nc.Close()
				_, rerr := nc.Request("$JS.API.STREAM.MSG.DELETE."+rmsgsStream, []byte(`{"seq":1}`), 5*time.Second)
				t.Fatalf("a network NATS client was let in (request: %v)", rerr)
			}
			if !errors.Is(err, nats.ErrAuthorization) {
				t.Fatalf("connect: %v; want an authorization violation", err)
			}
		})
	}
}
