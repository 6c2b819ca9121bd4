package lease_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fieldtrust/fieldtrust/internal/lease"
	"github.com/fieldtrust/fieldtrust/internal/store/postgres"
	"github.com/fieldtrust/fieldtrust/internal/store/postgres/pgtest"
)

// running records which node runs which partition or role right now, and
// any moment two ran the same one at once.
type running struct {
	mu         sync.Mutex
	by         map[string][]string // partition or role → nodes running it
	violations []string
	idle       map[string]bool // nodes that ran nothing at some moment after running something
}

func (r *running) run(ctx context.Context, node, what string) error {
	r.mu.Lock()
	if len(r.by[what]) > 0 {
		r.violations = append(r.violations, fmt.Sprintf("%s started on %s while %v ran it", what, node, r.by[what]))
	}
	r.by[what] = append(r.by[what], node)
	r.mu.Unlock()
	<-ctx.Done()
	r.mu.Lock()
	r.by[what] = slices.DeleteFunc(r.by[what], func(n string) bool { return n == node })
	idle := true
	for _, nodes := range r.by {
		idle = idle && !slices.Contains(nodes, node)
	}
	if idle {
		r.idle[node] = true
	}
	r.mu.Unlock()
	return nil
}

// count is how many things node runs.
func (r *running) count(node string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, nodes := range r.by {
		if slices.Contains(nodes, node) {
			n++
		}
	}
	return n
}

// owned reports whether each of the things is run by exactly one node.
func (r *running) owned(things []string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, w := range things {
		if len(r.by[w]) != 1 {
			return false
		}
	}
	return true
}

const parts = 8

var roles = []string{"outbox", "treeheads"}

func things() []string {
	var out []string
	for p := range parts {
		out = append(out, fmt.Sprintf("p%d", p))
	}
	return append(out, roles...)
}

type node struct {
	m      *lease.Manager
	cancel context.CancelFunc
	done   chan struct{}
}

func startNode(t *testing.T, st *postgres.Store, r *running, name string) *node {
	t.Helper()
	rs := map[string]func(context.Context) error{}
	for _, role := range roles {
		rs[role] = func(ctx context.Context) error { return r.run(ctx, name, role) }
	}
	m, err := lease.New(lease.Config{
		Node:       name,
		Connect:    func(ctx context.Context) (*pgx.Conn, error) { return st.LeaseConn(ctx, lease.ApplicationPrefix+name) },
		Partitions: parts,
		RunPartition: func(ctx context.Context, p int) error {
			return r.run(ctx, name, fmt.Sprintf("p%d", p))
		},
		Roles: rs, Tick: 50 * time.Millisecond, RetryMax: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &node{m: m, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(n.done); m.Run(ctx) }()
	t.Cleanup(n.stop)
	return n
}

func (n *node) stop() {
	n.cancel()
	<-n.done
}

// eventually polls cond until it holds or 20 s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition with a deadline
	}
}

func shares(r *running, want map[string]int) func() bool {
	return func() bool {
		if !r.owned(things()[:parts]) {
			return false
		}
		for n, w := range want {
			if got := r.count(n); got < w || got > w+len(roles) {
				return false
			}
		}
		return true
	}
}

// TestLeaseBalance: nodes joining and leaving split the partitions evenly,
// every partition and role is run by exactly one node, and a handover
// (stop, then unlock) never lets two nodes run one at once.
func TestLeaseBalance(t *testing.T) {
	st := pgtest.Open(t)
	r := &running{by: map[string][]string{}, idle: map[string]bool{}}
	startNode(t, st, r, "n1")
	eventually(t, "n1 holds everything", func() bool { return r.owned(things()) && r.count("n1") == parts+len(roles) })
	startNode(t, st, r, "n2")
	eventually(t, "4/4 split", shares(r, map[string]int{"n1": 4, "n2": 4}))
	n3 := startNode(t, st, r, "n3")
	eventually(t, "3/3/2 split", func() bool {
		c := []int{r.count("n1"), r.count("n2"), r.count("n3")}
		return r.owned(things()[:parts]) && c[2] >= 2 && c[2] <= 3+len(roles)
	})
	v := n3.m.View()
	if len(v.Members) != 3 || len(v.Partitions) != parts || len(v.Roles) != len(roles) {
		t.Errorf("view: %+v", v)
	}
	n3.stop()
	eventually(t, "4/4 after n3 left", shares(r, map[string]int{"n1": 4, "n2": 4}))
	if !r.owned(things()) {
		t.Error("a role is not run after n3 left")
	}
	if len(r.violations) > 0 {
		t.Errorf("ran twice at once: %v", r.violations)
	}
}

// TestLeaseConnectionLost: the server ends a node's lease connection (as
// it does when the node's process dies): the node stops everything it
// ran (fail closed), the other node takes it all, and once the node is
// back they share again.
func TestLeaseConnectionLost(t *testing.T) {
	st := pgtest.Open(t)
	r := &running{by: map[string][]string{}, idle: map[string]bool{}}
	n1 := startNode(t, st, r, "n1")
	startNode(t, st, r, "n2")
	eventually(t, "4/4 split", shares(r, map[string]int{"n1": 4, "n2": 4}))
	ctx := context.Background()
	admin, err := st.LeaseConn(ctx, "test-admin")
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	r.mu.Lock()
	clear(r.idle)
	r.mu.Unlock()
	var killed int
	if err := admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1`,
		lease.ApplicationPrefix+"n2").Scan(&killed); err != nil || killed != 1 {
		t.Fatalf("terminate n2's lease connection: %d, %v", killed, err)
	}
	// n2 stops what it ran; n1 takes everything (n2 reconnects meanwhile
	// and may take its share again: either way nothing is run twice at
	// the end and n2 ran nothing for a moment).
	eventually(t, "n2 stopped all its work", func() bool { r.mu.Lock(); defer r.mu.Unlock(); return r.idle["n2"] })
	eventually(t, "4/4 again after n2 reconnected", shares(r, map[string]int{"n1": 4, "n2": 4}))
	if !r.owned(things()) {
		t.Error("not everything owned once")
	}
	if v := n1.m.View(); len(v.Members) != 2 {
		t.Errorf("members: %v", v.Members)
	}
}

// TestLeaseDrain: a drained node stops and releases everything it ran,
// and its member lock: the others take all of it (4/4 of three nodes
// becomes 4/4 of two), nothing runs twice at once, the drained node
// takes nothing again even after its lease connection is lost, and its
// view says draining.
func TestLeaseDrain(t *testing.T) {
	st := pgtest.Open(t)
	r := &running{by: map[string][]string{}, idle: map[string]bool{}}
	n1 := startNode(t, st, r, "n1")
	startNode(t, st, r, "n2")
	n3 := startNode(t, st, r, "n3")
	eventually(t, "3 members, everything owned", func() bool {
		return r.owned(things()) && len(n1.m.View().Members) == 3 && r.count("n3") > 0
	})
	select {
	case <-n3.m.Drain():
	case <-time.After(20 * time.Second):
		t.Fatal("n3 did not drain within 20 s")
	}
	if c := r.count("n3"); c != 0 {
		t.Errorf("n3 runs %d things after draining", c)
	}
	v := n3.m.View()
	if !v.Draining || len(v.Held) != 0 || len(v.HeldRoles) != 0 || slices.Contains(v.Members, "n3") {
		t.Errorf("n3's view after draining: %+v", v)
	}
	eventually(t, "4/4 on n1 and n2", shares(r, map[string]int{"n1": 4, "n2": 4}))
	if !r.owned(things()) {
		t.Error("not everything owned once after the drain")
	}
	// A lost lease connection does not bring the drained node back.
	ctx := context.Background()
	admin, err := st.LeaseConn(ctx, "test-admin")
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1`, lease.ApplicationPrefix+"n3"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "n3 back on a lease connection, still draining", func() bool {
		v := n3.m.View()
		return v.Connected && v.Draining && len(v.Members) == 2
	})
	if c := r.count("n3"); c != 0 {
		t.Errorf("n3 runs %d things after reconnecting", c)
	}
	if len(r.violations) > 0 {
		t.Errorf("ran twice at once: %v", r.violations)
	}
}

func TestPartitionOf(t *testing.T) {
	seen := map[int]bool{}
	for i := range 200 {
		p := lease.PartitionOf(fmt.Sprintf("ms-%02d/acc-%03d", i%7, i), 16)
		if p < 0 || p >= 16 {
			t.Fatalf("partition %d", p)
		}
		seen[p] = true
	}
	if len(seen) != 16 {
		t.Errorf("200 accounts hit %d of 16 partitions", len(seen))
	}
	if lease.PartitionOf("ms/acc", 16) != lease.PartitionOf("ms/acc", 16) {
		t.Error("not stable")
	}
}
