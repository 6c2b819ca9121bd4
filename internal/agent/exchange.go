package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/ledger"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// Routes of the MindConnect API.
const (
	MindConnectPrefix = "/api/mindconnect/v3"
	ExchangePath      = MindConnectPrefix + "/exchange"
	MappingsPath      = MindConnectPrefix + "/dataPointMappings"
)

// maxFuture is how far in the future a timestamp may be.
const maxFuture = 24 * time.Hour

// exchange: POST /api/mindconnect/v3/exchange.
func (s *Service) exchange(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	a, err := s.authenticate(r)
	s.metrics.verify.Observe(time.Since(start).Seconds())
	if err == nil {
		err = s.doExchange(w, r, a)
	}
	if err != nil {
		s.fail(w, r, "exchange", a.ClientID, err)
	}
}

func (s *Service) doExchange(w http.ResponseWriter, r *http.Request, a store.Agent) error {
	if s.cfg.Ledger == nil {
		return errors.New("the exchange is not served here")
	}
	if !s.limits.post(a.ClientID) {
		return refuse(http.StatusTooManyRequests, errRateLimited, "too many posts from this agent; retry later", nil)
	}
	body := &capReader{r: r.Body, left: MaxExchangeBody}
	items, err := ParseExchange(r.Header.Get("Content-Type"), body)
	if body.exceeded {
		return refuse(http.StatusRequestEntityTooLarge, errInvalidRequest, fmt.Sprintf("the body is larger than %d bytes; send fewer timestamps per post", MaxExchangeBody), err)
	}
	if err != nil {
		return refuse(http.StatusBadRequest, errInvalidRequest, err.Error(), nil)
	}
	recs, err := s.build(r.Context(), a, items)
	if err != nil {
		return err
	}
	s.metrics.requests.WithLabelValues("exchange").Inc()
	w.WriteHeader(http.StatusOK)
	n := 0
	for _, rec := range recs {
		n += len(rec.Values)
	}
	s.metrics.values.Add(float64(n))
	return nil
}

// capReader reads at most left bytes and records whether the body had
// more (413 rather than a parse error).
type capReader struct {
	r        io.Reader
	left     int64
	exceeded bool
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		var one [1]byte
		if n, _ := c.r.Read(one[:]); n > 0 {
			c.exceeded = true
			return 0, errors.New("body too large")
		}
		return 0, io.EOF
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, err
}

// pending is one snapshot to build: a device's values at one time.
type pending struct {
	device string
	at     time.Time
	values []snapshot.Value
}

// build turns a post into snapshots of the agent's devices, records them
// in the ledger and stores them: all of the post or nothing.
func (s *Service) build(ctx context.Context, a store.Agent, items []Item) ([]store.SnapshotRecord, error) {
	cfg, err := parseStoredConfig(a.Config)
	if err != nil {
		return nil, err
	}
	if cfg == nil {
		return nil, refuse(http.StatusBadRequest, errInvalidRequest, "the agent has no data-source configuration; PUT one before posting data", nil)
	}
	maps, err := parseStoredMappings(a.Mappings)
	if err != nil {
		return nil, err
	}
	tg := targets(cfg, maps)
	now := s.now()
	var todo []pending
	for _, it := range items {
		if it.ConfigurationID != cfg.ConfigurationID {
			return nil, refuse(http.StatusBadRequest, errInvalidRequest, fmt.Sprintf("configurationId %q is not the agent's current one (%q); GET the data-source configuration", clip(it.ConfigurationID), cfg.ConfigurationID), nil)
		}
		for i, ser := range it.Series {
			if ser.Timestamp.After(now.Add(maxFuture)) || ser.Timestamp.Before(time.Unix(0, 0)) {
				return nil, refuse(http.StatusBadRequest, errInvalidRequest, fmt.Sprintf("series %d: timestamp %s is before 1970 or more than %s ahead", i, ser.Timestamp.Format(time.RFC3339), maxFuture), nil)
			}
			byDevice := map[string]int{} // device -> index in todo
			seen := map[string]bool{}
			for _, v := range ser.Values {
				t, ok := tg[v.DataPointID]
				if !ok {
					return nil, refuse(http.StatusBadRequest, errInvalidRequest, fmt.Sprintf("data point %q is not in the agent's data-source configuration", clip(v.DataPointID)), nil)
				}
				if seen[v.DataPointID] {
					return nil, refuse(http.StatusBadRequest, errInvalidRequest, fmt.Sprintf("series %d: data point %q appears twice", i, v.DataPointID), nil)
				}
				seen[v.DataPointID] = true
				_, dp := cfg.point(v.DataPointID)
				x, err := parseValue(dp.Type, v.Value)
				if err != nil {
					return nil, refuse(http.StatusBadRequest, errInvalidRequest, fmt.Sprintf("series %d: data point %q: %v", i, v.DataPointID, err), nil)
				}
				k, ok := byDevice[t.device]
				if !ok {
					k = len(todo)
					byDevice[t.device] = k
					todo = append(todo, pending{device: t.device, at: ser.Timestamp})
				}
				todo[k].values = append(todo[k].values, snapshot.Value{Channel: t.channel, Value: x, Unit: t.unit, Group: t.group})
			}
		}
	}
	return s.store(ctx, a, todo, now)
}

// parseValue reads a value of a data point type as a number.
func parseValue(typ, v string) (float64, error) {
	if !numericTypes[typ] {
		return 0, fmt.Errorf("type %s: fieldtrust snapshots carry numbers; this value cannot be stored", typ)
	}
	if typ == "BOOLEAN" {
		switch strings.ToLower(v) {
		case "true", "1":
			return 1, nil
		case "false", "0":
			return 0, nil
		}
		return 0, fmt.Errorf("value %q is not a boolean", clip(v))
	}
	if typ == "INT" || typ == "LONG" {
		// As the SDK's validator: any number text whose value is whole.
		x, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || x != math.Trunc(x) || math.IsInf(x, 0) {
			return 0, fmt.Errorf("value %q is not an integer", clip(v))
		}
		return x, nil
	}
	x, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if err != nil || math.IsNaN(x) || math.IsInf(x, 0) {
		return 0, fmt.Errorf("value %q is not a finite number", clip(v))
	}
	return x, nil
}

// store chains the pending snapshots onto their devices' heads, appends
// them to the ledger and stores them, one post of an agent at a time.
func (s *Service) store(ctx context.Context, a store.Agent, todo []pending, now time.Time) ([]store.SnapshotRecord, error) {
	mu, _ := s.chains.LoadOrStore(a.ClientID, &sync.Mutex{})
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()

	heads := map[string]*snapshot.Head{}
	recs := make([]store.SnapshotRecord, 0, len(todo))
	leaves := make([][]byte, 0, len(todo))
	received := now.Truncate(time.Millisecond).UTC()
	for _, p := range todo {
		head, ok := heads[p.device]
		if !ok {
			seq, hash, err := s.cfg.Store.DeviceHead(ctx, a.Path, p.device)
			switch {
			case errors.Is(err, store.ErrNotFound):
			case err != nil:
				return nil, fmt.Errorf("device head of %s/%s: %w", a.Path, p.device, err)
			default:
				head = &snapshot.Head{Seq: seq}
				copy(head.Hash[:], hash)
			}
		}
		b := snapshot.Builder{Device: p.device, Head: head}
		enc, snap, err := b.Next(p.at.UnixMilli(), p.values)
		if err != nil {
			return nil, refuse(http.StatusBadRequest, errInvalidRequest, fmt.Sprintf("device %s: %v", p.device, err), nil)
		}
		heads[p.device] = b.Head
		hash := snapshot.Hash(enc)
		recs = append(recs, store.SnapshotRecord{
			Gateway: a.Path, Device: p.device, Seq: snap.Seq, Time: snap.Time(), Hash: hash[:], Prev: snap.Prev, Values: snap.Values,
			Signer: store.AgentSignerPrefix + a.ClientID, SignedAt: received, ReceivedAt: received,
		})
		leaves = append(leaves, ledger.LeafData(a.Path, hash))
	}
	// Ledger first, idempotently (as ingest does): after a failed insert
	// the same post builds the same snapshots and finds their leaves.
	found, err := s.cfg.Ledger.FindAll(ctx, leaves)
	if err != nil {
		return nil, fmt.Errorf("ledger lookup: %w", err)
	}
	var fresh [][]byte
	var freshIdx []int
	for i, l := range leaves {
		if idx, ok := found[string(l)]; ok {
			recs[i].LedgerIndex = idx
		} else {
			fresh, freshIdx = append(fresh, l), append(freshIdx, i)
		}
	}
	if len(fresh) > 0 {
		first, _, _, err := s.cfg.Ledger.Append(ctx, fresh)
		if err != nil {
			return nil, fmt.Errorf("ledger append: %w", err)
		}
		for k, i := range freshIdx {
			recs[i].LedgerIndex = first + uint64(k)
		}
	}
	if _, err := s.cfg.Store.InsertSnapshots(ctx, recs); err != nil {
		return nil, fmt.Errorf("store snapshots of agent %s: %w", a.Path, err)
	}
	if s.cfg.Stored != nil {
		s.cfg.Stored(ctx, recs)
	}
	return recs, nil
}
