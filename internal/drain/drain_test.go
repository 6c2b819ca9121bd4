package drain_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fieldtrust/fieldtrust/internal/drain"
	"github.com/fieldtrust/fieldtrust/internal/lease"
	"github.com/fieldtrust/fieldtrust/internal/store/postgres"
	"github.com/fieldtrust/fieldtrust/internal/store/postgres/pgtest"
)

// running runs node's lease manager (no partitions or roles: its
// membership is what counts here).
func running(t *testing.T, st *postgres.Store, node string) *lease.Manager {
	t.Helper()
	m, err := lease.New(lease.Config{Node: node, Tick: 50 * time.Millisecond,
		Connect: func(ctx context.Context) (*pgx.Conn, error) { return st.LeaseConn(ctx, lease.ApplicationPrefix+node) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

// waitMembers polls until the cluster's members are want.
func waitMembers(t *testing.T, members drain.Members, want ...string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got, err := members(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("members %v, want %v", got, want)
		}
		time.Sleep(20 * time.Millisecond) // polling a condition with a deadline
	}
}

// TestRequest: the operator's request refuses a node that is not running
// and a drain that would leave too few nodes, and otherwise waits until
// the node recorded its drain.
func TestRequest(t *testing.T) {
	st := pgtest.Open(t)
	ctx := t.Context()
	conn, err := st.LeaseConn(ctx, "test-operator")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	members := func(ctx context.Context) ([]string, error) { return lease.Members(ctx, conn) }
	quiet := func(string) {}
	if _, err := drain.Request(ctx, st, members, "n2", drain.MinOthers, quiet); err == nil || !strings.Contains(err.Error(), "is not running") {
		t.Errorf("drain of a node not running: %v", err)
	}
	running(t, st, "n1")
	m2 := running(t, st, "n2")
	waitMembers(t, members, "n1", "n2")
	if _, err := drain.Request(ctx, st, members, "n2", drain.MinOthers, quiet); err == nil || !strings.Contains(err.Error(), "would leave 1 running node") {
		t.Errorf("drain of one of two nodes: %v", err)
	}
	if req, err := st.DrainRequest(ctx, "n2"); err != nil || req.Requested() {
		t.Fatalf("a refused drain left a request: %+v %v", req, err)
	}
	running(t, st, "n3")
	waitMembers(t, members, "n1", "n2", "n3")
	type result struct {
		took time.Duration
		err  error
	}
	done := make(chan result, 1)
	go func() {
		took, err := drain.Request(ctx, st, members, "n2", drain.MinOthers, quiet)
		done <- result{took, err}
	}()
	// The node's side: it sees the request and records its drain.
	deadline := time.Now().Add(20 * time.Second)
	for {
		req, err := st.DrainRequest(ctx, "n2")
		if err != nil {
			t.Fatal(err)
		}
		if req.Requested() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no request recorded")
		}
		time.Sleep(20 * time.Millisecond) // polling a condition with a deadline
	}
	<-m2.Drain() // what the node does on the request
	waitMembers(t, members, "n1", "n3")
	// While n2 drains, draining n3 would leave n1 alone, and n2 drains
	// already.
	if _, err := drain.Request(ctx, st, members, "n3", drain.MinOthers, quiet); err == nil || !strings.Contains(err.Error(), "would leave 1 running node") {
		t.Errorf("drain of n3 while n2 drains: %v", err)
	}
	if _, err := drain.Request(ctx, st, members, "n2", drain.MinOthers, quiet); err == nil || !strings.Contains(err.Error(), "drains already") {
		t.Errorf("drain of n2 while it drains: %v", err)
	}
	if err := st.MarkDrained(ctx, "n2"); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-done:
		if r.err != nil || r.took < 0 {
			t.Errorf("request: %v, %v", r.took, r.err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the request did not see the drain")
	}
	// The node's next start clears it.
	if err := st.ClearDrain(ctx, "n2"); err != nil {
		t.Fatal(err)
	}
	if req, err := st.DrainRequest(ctx, "n2"); err != nil || req.Requested() {
		t.Errorf("after clearing: %+v %v", req, err)
	}
}
