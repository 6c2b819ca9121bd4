// Package lease decides which node of a multi-node 'fieldtrust up' does
// what, through PostgreSQL advisory locks: the ingest partitions (each
// owned by exactly one node at a time) and the singleton roles (rules
// notifications, tree heads, device messaging: one leader each).
//
// Every node holds its locks on one dedicated connection (not a pooled
// one), so they live exactly as long as that connection: a node killed
// with SIGKILL loses its connection with its process, the server drops
// the locks, and the survivors take them on their next round (Tick). Each
// node also holds a member lock, so every node counts the live nodes
// (pg_locks) and balances: it holds about ceil(P/N) partitions, releases
// what it holds beyond that (stopping the partition's work before
// unlocking, so no two nodes run a partition at once), and takes free
// ones up to it.
//
// Fail closed: the connection is watched continuously (between rounds it
// waits for a notification, which returns at once when the server ends the
// connection), and when it is lost every partition and role of this node
// is stopped before it reconnects and competes again. The locks are
// scoped to the store's database and schema (the key's first half is a
// hash of both), so tests and deployments sharing a server do not meet.
//
// A node whose connection the server dropped while the node's process
// lives (pg_terminate_backend, a network cut the server noticed first) may
// still run its partitions for the moment it takes to notice, while
// another node already took them: the broker then hands the partition's
// MQTT session to whichever connected last, and ingest stores
// idempotently and acknowledges only what is stored, so the overlap can
// cost a redelivery, never a loss or a duplicate (docs/scale.md).
package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Kinds of lock, the high half of a lock's second key.
const (
	kindMember    = 1
	kindPartition = 2
	kindRole      = 3
	maxMembers    = 1024
)

// roundTimeout bounds one round's queries.
const roundTimeout = 5 * time.Second

// ApplicationPrefix starts the application_name of every lease
// connection; the node's name follows.
const ApplicationPrefix = "fieldtrust-node/"

// Config configures a node's leases.
type Config struct {
	// Node is this node's name (unique in the cluster).
	Node string
	// Connect opens the dedicated connection (postgres.Store.LeaseConn
	// with ApplicationPrefix + Node).
	Connect func(ctx context.Context) (*pgx.Conn, error)
	// Partitions is the number of ingest partitions (every node must use
	// the same number); RunPartition runs partition p until its ctx ends
	// (the lease is released or lost). A return before that is a failure:
	// the partition is released and may be taken again.
	Partitions   int
	RunPartition func(ctx context.Context, p int) error
	// Roles are the singleton roles by name, each run by one node at a
	// time until its ctx ends (same contract as RunPartition). Every node
	// must know the same names.
	Roles map[string]func(ctx context.Context) error
	// Tick is the time between rounds (default 500 ms): how soon a node
	// takes what a dead node held, once the server dropped its locks.
	Tick time.Duration
	// RetryMax bounds the backoff between reconnections (default 5 s).
	RetryMax time.Duration
	Logger   *slog.Logger
	// Rounds, if set, receives every round's view (tests).
	Rounds func(View)
}

// View is the cluster as one round saw it.
type View struct {
	Node       string            `json:"node"`       // this node
	Connected  bool              `json:"connected"`  // holding its lease connection
	Members    []string          `json:"members"`    // live nodes (sorted)
	Partitions map[int]string    `json:"partitions"` // partition → owner
	Roles      map[string]string `json:"roles"`      // role → owner
	Held       []int             `json:"held"`       // partitions this node runs (sorted)
	HeldRoles  []string          `json:"held_roles"` // roles this node runs (sorted)
	// Draining: the node was told to drain (Manager.Drain); it runs
	// nothing and is no member once Drained.
	Draining bool      `json:"draining,omitempty"`
	At       time.Time `json:"at"`
}

// Manager runs a node's leases.
type Manager struct {
	cfg   Config
	roles []string // sorted: a role's index is its key

	mu       sync.Mutex
	view     View
	workers  map[key]*worker
	draining bool
	member   int           // this session's member slot, -1 without one
	drained  chan struct{} // closed once a draining node holds nothing
	once     sync.Once
}

type key struct {
	kind  int
	index int
}

type worker struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// New returns a manager; Run runs it.
func New(cfg Config) (*Manager, error) {
	if cfg.Node == "" || cfg.Connect == nil {
		return nil, errors.New("lease: Node and Connect are required")
	}
	if cfg.Partitions < 0 || cfg.Partitions > 0xffff || (cfg.Partitions > 0 && cfg.RunPartition == nil) {
		return nil, errors.New("lease: Partitions must be within 0..65535, with RunPartition")
	}
	if cfg.Tick <= 0 {
		cfg.Tick = 500 * time.Millisecond
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	m := &Manager{cfg: cfg, workers: map[key]*worker{}, member: -1, drained: make(chan struct{})}
	for name := range cfg.Roles {
		m.roles = append(m.roles, name)
	}
	slices.Sort(m.roles)
	m.view = View{Node: cfg.Node}
	return m, nil
}

// View returns what the last round saw (Connected false while the node
// holds no lease connection).
func (m *Manager) View() View {
	m.mu.Lock()
	defer m.mu.Unlock()
	v := m.view
	v.Held, v.HeldRoles = m.heldLocked()
	return v
}

func (m *Manager) heldLocked() ([]int, []string) {
	var parts []int
	var roles []string
	for k := range m.workers {
		switch k.kind {
		case kindPartition:
			parts = append(parts, k.index)
		case kindRole:
			roles = append(roles, m.roles[k.index])
		}
	}
	slices.Sort(parts)
	slices.Sort(roles)
	return parts, roles
}

// Drain makes the node give everything up for good (until the process
// starts again): on its next round it stops every partition and role it
// runs, then unlocks them (the order of the balance: never two nodes at
// once), and releases its member lock, so the others count one node less
// and take its share; it takes nothing again. The channel is closed when
// that is done.
func (m *Manager) Drain() <-chan struct{} {
	m.mu.Lock()
	m.draining = true
	m.view.Draining = true
	m.mu.Unlock()
	return m.drained
}

func (m *Manager) isDraining() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.draining
}

// Run holds and balances the node's leases until ctx ends. It returns nil
// then, having stopped everything it ran; connection failures are
// retried with backoff.
func (m *Manager) Run(ctx context.Context) error {
	delay := m.cfg.Tick
	for {
		start := time.Now()
		err := m.session(ctx)
		m.stopAll()
		m.mu.Lock()
		m.view.Connected = false
		m.mu.Unlock()
		if ctx.Err() != nil {
			return nil
		}
		if time.Since(start) > m.cfg.RetryMax {
			delay = m.cfg.Tick
		}
		m.cfg.Logger.Warn("lease connection lost: stopped every partition and role of this node; reconnecting",
			"node", m.cfg.Node, "err", err, "in", delay)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(2*delay, m.cfg.RetryMax)
	}
}

// session runs rounds on one connection until it fails or ctx ends; it
// stops every piece of work before it closes the connection.
func (m *Manager) session(ctx context.Context) (err error) {
	conn, err := m.cfg.Connect(ctx)
	if err != nil {
		return err
	}
	// Fail closed: whatever ends the session, the node's work stops
	// before the connection (and with it the locks) is let go.
	defer func() {
		m.stopAll()
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn.Close(cctx)
	}()
	// The server notices a silent peer (a node cut off by the network)
	// within about 11 s instead of the system's default of hours, and drops
	// its locks for the others to take.
	if _, err := conn.Exec(ctx, `SET tcp_keepalives_idle = 5; SET tcp_keepalives_interval = 2; SET tcp_keepalives_count = 3`); err != nil {
		return fmt.Errorf("lease connection keepalives: %w", err)
	}
	ns, err := namespace(ctx, conn)
	if err != nil {
		return err
	}
	member := -1
	for k := range maxMembers {
		if m.isDraining() {
			break // a draining node is no member
		}
		ok, err := tryLock(ctx, conn, ns, kindMember, k)
		if err != nil {
			return err
		}
		if ok {
			member = k
			break
		}
	}
	if member < 0 && !m.isDraining() {
		return fmt.Errorf("lease: more than %d nodes", maxMembers)
	}
	m.mu.Lock()
	m.member = member
	m.mu.Unlock()
	m.cfg.Logger.Info("lease connection up", "node", m.cfg.Node, "member_slot", member)
	for {
		// A round that cannot finish (the server unreachable) ends the
		// session: this node stops its work rather than wait for the
		// network (fail closed).
		rctx, cancel := context.WithTimeout(ctx, roundTimeout)
		err := m.round(rctx, conn, ns)
		cancel()
		if err != nil {
			return err
		}
		if err := m.wait(ctx, conn); err != nil {
			return err
		}
	}
}

// wait waits one Tick on the connection: a server that ends the
// connection (or a broken socket) ends the wait at once.
func (m *Manager) wait(ctx context.Context, conn *pgx.Conn) error {
	wctx, cancel := context.WithTimeout(ctx, m.cfg.Tick)
	defer cancel()
	for {
		_, err := conn.WaitForNotification(wctx)
		switch {
		case err == nil:
			continue // not ours: keep waiting
		case ctx.Err() != nil:
			return ctx.Err()
		case wctx.Err() != nil:
			if conn.IsClosed() {
				return errors.New("lease connection closed")
			}
			return nil
		default:
			return fmt.Errorf("lease connection: %w", err)
		}
	}
}

func lockKey(kind, index int) int64 { return int64(kind)<<16 | int64(index) }

func tryLock(ctx context.Context, conn *pgx.Conn, ns int64, kind, index int) (bool, error) {
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1::int4, $2::int4)`, ns, lockKey(kind, index)).Scan(&ok); err != nil {
		return false, fmt.Errorf("lease lock: %w", err)
	}
	return ok, nil
}

func unlock(ctx context.Context, conn *pgx.Conn, ns int64, k key) error {
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_advisory_unlock($1::int4, $2::int4)`, ns, lockKey(k.kind, k.index)).Scan(&ok); err != nil {
		return fmt.Errorf("lease unlock: %w", err)
	}
	if !ok {
		return errors.New("lease unlock: the lock was not held")
	}
	return nil
}

// namespace is the first key of the cluster's advisory locks: a hash of
// the database and schema, so that clusters sharing a server do not meet.
func namespace(ctx context.Context, conn *pgx.Conn) (int64, error) {
	var ns int64
	if err := conn.QueryRow(ctx, `SELECT (hashtext(current_database() || '/' || current_schema()) & 2147483647)::int8`).Scan(&ns); err != nil {
		return 0, fmt.Errorf("lease namespace: %w", err)
	}
	return ns, nil
}

// Members lists the nodes that hold a member lock now — running and not
// draining — sorted; conn is any connection to the cluster's database and
// schema (the operator's 'cluster drain').
func Members(ctx context.Context, conn *pgx.Conn) ([]string, error) {
	ns, err := namespace(ctx, conn)
	if err != nil {
		return nil, err
	}
	locks, err := readLocks(ctx, conn, ns)
	if err != nil {
		return nil, err
	}
	var out []string
	for k, owner := range locks {
		if k.kind == kindMember {
			out = append(out, owner)
		}
	}
	slices.Sort(out)
	return out, nil
}

// locks reads every lock of the namespace and its holder's node name.
func (m *Manager) locks(ctx context.Context, conn *pgx.Conn, ns int64) (map[key]string, error) {
	return readLocks(ctx, conn, ns)
}

func readLocks(ctx context.Context, conn *pgx.Conn, ns int64) (map[key]string, error) {
	rows, err := conn.Query(ctx, `SELECT l.objid::int8, coalesce(a.application_name, '')
		FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid::int8 = $1
		  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())`, ns)
	if err != nil {
		return nil, fmt.Errorf("lease view: %w", err)
	}
	out := map[key]string{}
	for rows.Next() {
		var k int64
		var app string
		if err := rows.Scan(&k, &app); err != nil {
			rows.Close()
			return nil, fmt.Errorf("lease view: %w", err)
		}
		out[key{kind: int(k >> 16), index: int(k & 0xffff)}] = strings.TrimPrefix(app, ApplicationPrefix)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("lease view: %w", err)
	}
	return out, nil
}

// round looks at the cluster, reaps work that ended, and balances.
func (m *Manager) round(ctx context.Context, conn *pgx.Conn, ns int64) error {
	locks, err := m.locks(ctx, conn, ns)
	if err != nil {
		return err
	}
	// Work that ended on its own gives its lease back.
	for k, w := range m.snapshotWorkers() {
		select {
		case <-w.done:
			m.cfg.Logger.Warn("lease: work ended; releasing it", "node", m.cfg.Node, "what", m.name(k), "err", w.err)
			m.forget(k)
			if err := unlock(ctx, conn, ns, k); err != nil {
				return err
			}
			delete(locks, k)
		default:
		}
	}
	if m.isDraining() {
		if err := m.release(ctx, conn, ns, locks); err != nil {
			return err
		}
		m.publish(locks)
		m.once.Do(func() { close(m.drained) })
		return nil
	}
	members := 0
	for k := range locks {
		if k.kind == kindMember {
			members++
		}
	}
	members = max(members, 1)
	P := m.cfg.Partitions
	target := (P + members - 1) / members
	held, heldRoles := m.held()
	// Beyond its share: stop, then unlock (highest partitions first).
	for len(held) > target {
		p := held[len(held)-1]
		held = held[:len(held)-1]
		k := key{kindPartition, p}
		m.stop(k)
		if err := unlock(ctx, conn, ns, k); err != nil {
			return err
		}
		delete(locks, k)
		m.cfg.Logger.Info("lease: partition released to balance", "node", m.cfg.Node, "partition", p, "members", members)
	}
	// Below it: take free partitions, starting at a point of this node's
	// own so that nodes starting together do not contend for the same.
	start := int(hashName(m.cfg.Node) % uint32(max(P, 1)))
	for i := 0; i < P && len(held) < target; i++ {
		p := (start + i) % P
		k := key{kindPartition, p}
		if _, taken := locks[k]; taken {
			continue
		}
		ok, err := tryLock(ctx, conn, ns, kindPartition, p)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		locks[k] = m.cfg.Node
		held = append(held, p)
		m.start(k, func(ctx context.Context) error { return m.cfg.RunPartition(ctx, p) })
		m.cfg.Logger.Info("lease: partition taken", "node", m.cfg.Node, "partition", p, "members", members)
	}
	// Roles: a free one is taken by a node holding fewer than its share.
	roleShare := (len(m.roles) + members - 1) / members
	for i, name := range m.roles {
		k := key{kindRole, i}
		if _, taken := locks[k]; taken || len(heldRoles) >= roleShare {
			continue
		}
		ok, err := tryLock(ctx, conn, ns, kindRole, i)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		locks[k] = m.cfg.Node
		heldRoles = append(heldRoles, name)
		m.start(k, m.cfg.Roles[name])
		m.cfg.Logger.Info("lease: role taken", "node", m.cfg.Node, "role", name)
	}
	m.publish(locks)
	return nil
}

// release stops and unlocks everything a draining node runs, then its
// member lock.
func (m *Manager) release(ctx context.Context, conn *pgx.Conn, ns int64, locks map[key]string) error {
	for k := range m.snapshotWorkers() {
		m.stop(k)
		if err := unlock(ctx, conn, ns, k); err != nil {
			return err
		}
		delete(locks, k)
		m.cfg.Logger.Info("lease: released to drain", "node", m.cfg.Node, "what", m.name(k))
	}
	m.mu.Lock()
	member := m.member
	m.mu.Unlock()
	if member >= 0 {
		k := key{kindMember, member}
		if err := unlock(ctx, conn, ns, k); err != nil {
			return err
		}
		delete(locks, k)
		m.mu.Lock()
		m.member = -1
		m.mu.Unlock()
		m.cfg.Logger.Info("lease: drained: this node runs nothing and is no member", "node", m.cfg.Node)
	}
	return nil
}

// publish makes the round's view of the locks the manager's view.
func (m *Manager) publish(locks map[key]string) {
	v := View{Node: m.cfg.Node, Connected: true, Partitions: map[int]string{}, Roles: map[string]string{}, At: time.Now()}
	for k, owner := range locks {
		switch k.kind {
		case kindMember:
			v.Members = append(v.Members, owner)
		case kindPartition:
			v.Partitions[k.index] = owner
		case kindRole:
			if k.index < len(m.roles) {
				v.Roles[m.roles[k.index]] = owner
			}
		}
	}
	slices.Sort(v.Members)
	m.mu.Lock()
	v.Draining = m.draining
	m.view = v
	v.Held, v.HeldRoles = m.heldLocked()
	m.mu.Unlock()
	if m.cfg.Rounds != nil {
		m.cfg.Rounds(v)
	}
}

func (m *Manager) name(k key) string {
	if k.kind == kindRole {
		return "role " + m.roles[k.index]
	}
	return fmt.Sprintf("partition %d", k.index)
}

func (m *Manager) held() ([]int, []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.heldLocked()
}

func (m *Manager) snapshotWorkers() map[key]*worker {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[key]*worker, len(m.workers))
	for k, w := range m.workers {
		out[k] = w
	}
	return out
}

func (m *Manager) start(k key, run func(context.Context) error) {
	ctx, cancel := context.WithCancel(context.Background())
	w := &worker{cancel: cancel, done: make(chan struct{})}
	m.mu.Lock()
	m.workers[k] = w
	m.mu.Unlock()
	go func() {
		defer close(w.done)
		w.err = run(ctx)
	}()
}

func (m *Manager) forget(k key) {
	m.mu.Lock()
	delete(m.workers, k)
	m.mu.Unlock()
}

// stop ends one piece of work and waits until it returned.
func (m *Manager) stop(k key) {
	m.mu.Lock()
	w := m.workers[k]
	delete(m.workers, k)
	m.mu.Unlock()
	if w != nil {
		w.cancel()
		<-w.done
	}
}

// stopAll ends every piece of work of this node and waits for all.
func (m *Manager) stopAll() {
	m.mu.Lock()
	ws := m.workers
	m.workers = map[key]*worker{}
	m.mu.Unlock()
	for _, w := range ws {
		w.cancel()
	}
	for _, w := range ws {
		<-w.done
	}
}

// PartitionOf is the partition of an account (its "master/account"
// path) among n: a stable hash (FNV-1a), the same on every node and
// version.
func PartitionOf(account string, n int) int { return int(hashName(account) % uint32(n)) }

// hashName is FNV-1a.
func hashName(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}
