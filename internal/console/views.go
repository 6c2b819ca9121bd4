package console

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/fieldtrust/fieldtrust/internal/agent"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/snapshot"
	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/topic"
)

// registerViews adds the console's own pages.
func (c *Console) registerViews() {
	c.pages.Add(Page{Path: "/fleet", Title: "Fleet", Nav: true, Order: 10, Handle: c.fleet})
	c.pages.Add(Page{Path: "/devices/{path...}", Title: "Device", Order: 11, Handle: c.device})
	c.pages.Add(Page{Path: "/series/{path...}", Title: "Series", Order: 12, Handle: c.series})
	c.pages.Add(Page{Path: "/audit", Title: "What left my site", Nav: true, Order: 20, Handle: c.auditView})
	c.pages.Add(Page{Path: "/ledger", Title: "Ledger", Nav: true, Order: 30, Handle: c.ledgerView})
	c.pages.Add(Page{Path: "/admin", Title: "Admin", Nav: true, Order: 90, MinRole: store.RoleAdmin, Handle: c.admin,
		Actions: []Action{
			{Path: "/admin/users/invite", MinRole: store.RoleAdmin, Handle: c.adminInvite},
			{Path: "/admin/users/disable", MinRole: store.RoleAdmin, Handle: c.adminDisable},
			{Path: "/admin/certificates/revoke", MinRole: store.RoleAdmin, Handle: c.adminRevoke},
			{Path: "/admin/claims", MinRole: store.RoleAdmin, VendorOnly: true, MaxBody: maxClaimsUpload, Handle: c.adminClaims},
		}})
	c.pages.Add(Page{Path: "/account", Title: "Account", Order: 95, Handle: c.account})
}

// badInput answers a query or form parameter the user got wrong.
func (c *Console) badInput(w http.ResponseWriter, r *http.Request, v *Viewer, msg string) {
	c.fail(w, r, v, http.StatusBadRequest, msg)
}

// --- fleet ---

const fleetPageSize = 50

type fleetRow struct {
	Path, Gateway, Device, Type string
	Status                      string // online, offline, unknown
	LastSeen, Measured          time.Time
	Seq                         uint64
	Values                      []snapshot.Value
	Gaps, Forks, Stale          int
}

// Integrity reports whether the row has integrity events.
func (f fleetRow) Integrity() bool { return f.Gaps+f.Forks+f.Stale > 0 }

type fleetView struct {
	Rows                      []fleetRow
	Total, Shown, Page, Pages int
	Query, State              string
	Online, Offline, Troubled int
	PrevURL, NextURL          string
}

// searchParam validates a free-text search: printable, at most 128 bytes.
func searchParam(s string) (string, error) {
	if len(s) > 128 {
		return "", errors.New("the search text is longer than 128 characters")
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return "", errors.New("the search text contains a control character")
		}
	}
	return strings.TrimSpace(s), nil
}

func pageParam(s string) (int, error) {
	if s == "" {
		return 1, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 1_000_000 {
		return 0, fmt.Errorf("page %q: a number from 1", s)
	}
	return n, nil
}

func (c *Console) fleet(w http.ResponseWriter, r *http.Request, v *Viewer) {
	q := r.URL.Query()
	search, err := searchParam(q.Get("q"))
	if err != nil {
		c.badInput(w, r, v, err.Error())
		return
	}
	state := q.Get("state")
	if !slices.Contains([]string{"", "online", "offline", "integrity"}, state) {
		c.badInput(w, r, v, "state: use online, offline or integrity (or leave it empty for all)")
		return
	}
	page, err := pageParam(q.Get("page"))
	if err != nil {
		c.badInput(w, r, v, err.Error())
		return
	}
	rows, err := c.fleetRows(r, v)
	if err != nil {
		c.serverError(w, r, v, err)
		return
	}
	fv := fleetView{Query: search, State: state, Page: page}
	needle := strings.ToLower(search)
	var keep []fleetRow
	for _, row := range rows {
		switch row.Status {
		case "online":
			fv.Online++
		case "offline":
			fv.Offline++
		}
		if row.Integrity() {
			fv.Troubled++
		}
		if needle != "" && !strings.Contains(strings.ToLower(row.Path), needle) && !strings.Contains(strings.ToLower(row.Type), needle) {
			continue
		}
		if (state == "online" || state == "offline") && row.Status != state || state == "integrity" && !row.Integrity() {
			continue
		}
		keep = append(keep, row)
	}
	fv.Total = len(keep)
	fv.Pages = max(1, (len(keep)+fleetPageSize-1)/fleetPageSize)
	if page > fv.Pages {
		page = fv.Pages
		fv.Page = page
	}
	lo := (page - 1) * fleetPageSize
	fv.Rows = keep[lo:min(lo+fleetPageSize, len(keep))]
	fv.Shown = len(fv.Rows)
	if err := c.fillLatest(r, fv.Rows); err != nil {
		c.serverError(w, r, v, err)
		return
	}
	link := func(p int) string {
		u := url.Values{"page": {strconv.Itoa(p)}}
		if search != "" {
			u.Set("q", search)
		}
		if state != "" {
			u.Set("state", state)
		}
		return "/fleet?" + u.Encode()
	}
	if page > 1 {
		fv.PrevURL = link(page - 1)
	}
	if page < fv.Pages {
		fv.NextURL = link(page + 1)
	}
	c.Render(w, r, v, "fleet", "Fleet", fv)
}

// integrityWindow is how far back the fleet view counts integrity events.
const integrityWindow = 7 * 24 * time.Hour

// fleetRows is every device in the viewer's scope with its latest
// snapshot, gateway state and recent integrity events.
func (c *Console) fleetRows(r *http.Request, v *Viewer) ([]fleetRow, error) {
	ctx := r.Context()
	devs, err := c.opts.Store.ListDevices(ctx, v.Scope)
	if err != nil {
		return nil, err
	}
	evs, err := c.opts.Store.IntegrityEvents(ctx, v.Scope, c.now().Add(-integrityWindow), time.Time{}, store.MaxLimit)
	if err != nil {
		return nil, err
	}
	type key struct{ gw, dev string }
	counts := map[key]*[3]int{}
	for _, e := range evs {
		k := key{e.Gateway, e.Device}
		if counts[k] == nil {
			counts[k] = &[3]int{}
		}
		switch e.Kind {
		case store.EventGap:
			counts[k][0]++
		case store.EventFork:
			counts[k][1]++
		default:
			counts[k][2]++
		}
	}
	rows := make([]fleetRow, 0, len(devs))
	for _, rec := range devs {
		if !v.CanRead(rec.Gateway) { // the store scoped it; TACS has the last word
			continue
		}
		row := fleetRow{Path: rec.Path(), Gateway: rec.Gateway, Device: rec.Device, Type: rec.DeviceType, LastSeen: rec.LastTime, Measured: rec.LastTime, Seq: rec.LastSeq, Status: "unknown"}
		if n := counts[key{rec.Gateway, rec.Device}]; n != nil {
			row.Gaps, row.Forks, row.Stale = n[0], n[1], n[2]
		}
		if c.opts.Status != nil {
			if s, ok := c.opts.Status.Status(rec.Gateway); ok {
				row.Status = map[bool]string{true: "online", false: "offline"}[s.Online]
			}
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// fillLatest adds the head snapshot's values to the rows shown: read per
// gateway of the page, so a page costs the same with 10 or 10,000
// devices in scope.
func (c *Console) fillLatest(r *http.Request, rows []fleetRow) error {
	byPath := map[string]*fleetRow{}
	var gws []string
	for i := range rows {
		byPath[rows[i].Path] = &rows[i]
		if !slices.Contains(gws, rows[i].Gateway) {
			gws = append(gws, rows[i].Gateway)
		}
	}
	for _, gw := range gws {
		heads, err := c.opts.Store.LatestSnapshots(r.Context(), gw)
		if err != nil {
			return err
		}
		for _, h := range heads {
			if row := byPath[h.Path()]; row != nil {
				row.Values, row.LastSeen, row.Seq = h.Values[:min(4, len(h.Values))], h.ReceivedAt, h.Seq
			}
		}
	}
	return nil
}

func (c *Console) serverError(w http.ResponseWriter, r *http.Request, v *Viewer, err error) {
	if errors.Is(err, store.ErrInvalidScope) {
		c.badInput(w, r, v, err.Error())
		return
	}
	c.log.Error("console page failed", "path", r.URL.Path, "err", err)
	c.fail(w, r, v, http.StatusInternalServerError, "Internal error; the platform log has the details.")
}

// --- device ---

// ServiceInterval is the maintenance interval the operating-hours gauge
// counts toward.
const ServiceInterval = 2000.0

type gauge struct {
	Channel, Unit string
	Value         float64
	InInterval    float64 // hours since the last service boundary
	Interval      float64
	Remaining     float64
}

type deviceView struct {
	Path, Gateway, Device, Type string
	Status                      string
	Head                        store.SnapshotRecord
	Snapshots                   uint64
	CertSerial                  string
	CertExpiry                  time.Time
	Gauges                      []gauge
	Channels                    []string
	Channel                     string
	Range                       string
	Ranges                      []string
	From, To                    time.Time
	Recent                      []store.SnapshotRecord
	Events                      []store.IntegrityEvent
	LeafHash                    string
	Calibration                 *calibrationView
}

// Agent reports whether the device's latest snapshot came from an HTTPS
// agent (no MQTT status, no transport certificate, not signed end to end).
func (d deviceView) Agent() bool { return d.Head.Provenance() == store.ProvenanceAgentTLS }

var chartRanges = map[string]time.Duration{"1h": time.Hour, "6h": 6 * time.Hour, "24h": 24 * time.Hour, "7d": 7 * 24 * time.Hour}

// notFound is the answer for a device that does not exist or lies outside
// the viewer's scope: the same, so nothing about other tenants leaks.
func (c *Console) notFound(w http.ResponseWriter, r *http.Request, v *Viewer) {
	c.fail(w, r, v, http.StatusNotFound, "No such device.")
}

func (c *Console) device(w http.ResponseWriter, r *http.Request, v *Viewer) {
	gw, dev, err := gatewayOf(r.PathValue("path"))
	if err != nil {
		c.badInput(w, r, v, "Bad device path: "+err.Error())
		return
	}
	if !v.CanRead(gw) {
		c.notFound(w, r, v)
		return
	}
	ctx := r.Context()
	devs, err := c.opts.Store.ListDevices(ctx, gw)
	if err != nil {
		c.serverError(w, r, v, err)
		return
	}
	dv := deviceView{Path: gw + "/" + dev, Gateway: gw, Device: dev, Status: "unknown", Ranges: []string{"1h", "6h", "24h", "7d"}}
	found := false
	for _, d := range devs {
		if d.Gateway == gw && d.Device == dev {
			found, dv.Type, dv.Snapshots = true, d.DeviceType, d.Snapshots
		}
	}
	if !found {
		c.notFound(w, r, v)
		return
	}
	heads, err := c.opts.Store.LatestSnapshots(ctx, gw)
	if err != nil {
		c.serverError(w, r, v, err)
		return
	}
	for _, h := range heads {
		if h.Gateway == gw && h.Device == dev {
			dv.Head = h
		}
	}
	dv.LeafHash = leafHash(dv.Head)
	if c.opts.Status != nil {
		if s, ok := c.opts.Status.Status(gw); ok {
			dv.Status = map[bool]string{true: "online", false: "offline"}[s.Online]
		}
	}
	certs, err := c.opts.Store.ListCertificates(ctx, store.CertFilter{Domain: "transport", Name: gw})
	if err != nil {
		c.serverError(w, r, v, err)
		return
	}
	for _, ce := range certs {
		if !ce.Revoked() && ce.NotAfter.After(dv.CertExpiry) {
			dv.CertSerial, dv.CertExpiry = ce.Serial, ce.NotAfter
		}
	}
	for _, val := range dv.Head.Values {
		dv.Channels = append(dv.Channels, val.Channel)
		if val.Group == "runtime" && val.Unit == "h" {
			in := val.Value - ServiceInterval*float64(int64(val.Value/ServiceInterval))
			dv.Gauges = append(dv.Gauges, gauge{Channel: val.Channel, Unit: val.Unit, Value: val.Value, InInterval: in, Interval: ServiceInterval, Remaining: ServiceInterval - in})
		}
	}
	q := r.URL.Query()
	dv.Channel = q.Get("channel")
	if dv.Channel == "" && len(dv.Channels) > 0 {
		dv.Channel = dv.Channels[0]
		for _, val := range dv.Head.Values {
			if val.Group != "runtime" {
				dv.Channel = val.Channel
				break
			}
		}
	} else if dv.Channel != "" && !slices.Contains(dv.Channels, dv.Channel) {
		c.badInput(w, r, v, fmt.Sprintf("channel %q: this device has %s", dv.Channel, strings.Join(dv.Channels, ", ")))
		return
	}
	dv.Range = q.Get("range")
	if dv.Range == "" {
		dv.Range = "1h"
	}
	span, ok := chartRanges[dv.Range]
	if !ok {
		c.badInput(w, r, v, "range: use 1h, 6h, 24h or 7d")
		return
	}
	dv.To = dv.Head.Time.Add(time.Millisecond)
	dv.From = dv.To.Add(-span)
	recent, err := c.opts.Store.QuerySnapshots(ctx, store.SnapshotQuery{Scope: v.Scope, Gateway: gw, Device: dev, From: dv.To.Add(-10 * time.Minute), To: dv.To, Limit: store.MaxLimit})
	if err != nil {
		c.serverError(w, r, v, err)
		return
	}
	recent = recent[max(0, len(recent)-20):]
	slices.Reverse(recent)
	dv.Recent = recent
	evs, err := c.opts.Store.IntegrityEvents(ctx, gw, time.Time{}, time.Time{}, store.MaxLimit)
	if err != nil {
		c.serverError(w, r, v, err)
		return
	}
	for _, e := range slices.Backward(evs) {
		if e.Device == dev && len(dv.Events) < 20 {
			dv.Events = append(dv.Events, e)
		}
	}
	if dv.Calibration, err = c.calibrationOf(ctx, gw, dev); err != nil {
		c.serverError(w, r, v, err)
		return
	}
	c.Render(w, r, v, "device", dv.Path, dv)
}

// Chart data limits: the browser gets at most 2*maxPoints points whatever
// the range (the server streams the range through the buckets, in
// constant memory); a range spans at most maxChartSpan.
const (
	defaultPoints = 1000
	maxPoints     = 4000
	maxChartSpan  = 31 * 24 * time.Hour
)

// series serves a channel's values over a time range, downsampled on the
// server to min/max buckets (each bucket keeps its extremes, in time
// order, so spikes survive): a day of 1 Hz data is 86,400 snapshots, the
// browser gets at most 2 points per bucket.
func (c *Console) series(w http.ResponseWriter, r *http.Request, v *Viewer) {
	gw, dev, err := gatewayOf(r.PathValue("path"))
	if err != nil {
		jsonError(w, http.StatusBadRequest, "bad device path: "+err.Error())
		return
	}
	if !v.CanRead(gw) {
		jsonError(w, http.StatusNotFound, "no such device")
		return
	}
	q := r.URL.Query()
	ch := q.Get("channel")
	if err := pki.ValidateElement(ch); err != nil {
		jsonError(w, http.StatusBadRequest, fmt.Sprintf("channel %q: %v", ch, err))
		return
	}
	from, err1 := time.Parse(time.RFC3339Nano, q.Get("from"))
	to, err2 := time.Parse(time.RFC3339Nano, q.Get("to"))
	if err1 != nil || err2 != nil || !from.Before(to) || to.Sub(from) > maxChartSpan {
		jsonError(w, http.StatusBadRequest, "from and to: RFC 3339 times such as 2026-11-22T08:00:00Z, from before to, at most 31 days apart")
		return
	}
	points := defaultPoints
	if s := q.Get("points"); s != "" {
		if points, err = strconv.Atoi(s); err != nil || points < 10 || points > maxPoints {
			jsonError(w, http.StatusBadRequest, fmt.Sprintf("points: a number from 10 to %d", maxPoints))
			return
		}
	}
	s, err := c.loadSeries(r, v, gw, dev, ch, from, to, points)
	if err != nil {
		c.log.Error("console series", "err", err)
		jsonError(w, http.StatusInternalServerError, "internal error; the platform log has the details")
		return
	}
	writeJSON(w, http.StatusOK, s)
}

// Series is a downsampled channel: T in Unix seconds (fractional), V the
// values; Raw is how many snapshots the range held.
type Series struct {
	Channel string    `json:"channel"`
	Unit    string    `json:"unit,omitempty"`
	T       []float64 `json:"t"`
	V       []float64 `json:"v"`
	Raw     int       `json:"raw"`
}

func (c *Console) loadSeries(r *http.Request, v *Viewer, gw, dev, ch string, from, to time.Time, points int) (Series, error) {
	s := Series{Channel: ch}
	b := newBuckets(from, to, points)
	n, err := c.opts.Store.ChannelSeries(r.Context(), store.SeriesQuery{Scope: v.Scope, Gateway: gw, Device: dev, Channel: ch, From: from, To: to}, b.add)
	if err != nil {
		return s, err
	}
	s.Raw = n
	s.T, s.V = b.points()
	if n > 0 {
		// The unit of the channel: from the device's head snapshot.
		if heads, err := c.opts.Store.LatestSnapshots(r.Context(), gw); err == nil {
			for _, h := range heads {
				for _, val := range h.Values {
					if h.Device == dev && val.Channel == ch {
						s.Unit = val.Unit
					}
				}
			}
		}
	}
	return s, nil
}

// buckets downsample a time series to min/max per bucket; while the
// series has no more than two points per bucket it is kept as it is.
type buckets struct {
	from     time.Time
	width    time.Duration
	b        []bucket
	raw      []rawPoint // nil once the series outgrew 2 points per bucket
	overflow bool
}

type rawPoint struct {
	t time.Time
	v float64
}

type bucket struct {
	n          int
	minT, maxT time.Time
	minV, maxV float64
}

func newBuckets(from, to time.Time, n int) *buckets {
	w := to.Sub(from) / time.Duration(n)
	if w <= 0 {
		w = 1
	}
	return &buckets{from: from, width: w, b: make([]bucket, n)}
}

func (bs *buckets) add(t time.Time, v float64) {
	if t.Before(bs.from) {
		return // (a negative offset would truncate to bucket 0)
	}
	i := int(t.Sub(bs.from) / bs.width)
	if i >= len(bs.b) {
		return
	}
	if !bs.overflow {
		if len(bs.raw) < 2*len(bs.b) {
			bs.raw = append(bs.raw, rawPoint{t, v})
		} else {
			bs.raw, bs.overflow = nil, true
		}
	}
	b := &bs.b[i]
	if b.n == 0 || v < b.minV {
		b.minV, b.minT = v, t
	}
	if b.n == 0 || v > b.maxV {
		b.maxV, b.maxT = v, t
	}
	b.n++
}

func (bs *buckets) points() (ts, vs []float64) {
	ts, vs = []float64{}, []float64{}
	sec := func(t time.Time) float64 { return float64(t.UnixMilli()) / 1000 }
	if !bs.overflow {
		for _, p := range bs.raw {
			ts, vs = append(ts, sec(p.t)), append(vs, p.v)
		}
		return ts, vs
	}
	for _, b := range bs.b {
		switch {
		case b.n == 0:
		case b.n == 1 || b.minT.Equal(b.maxT):
			ts, vs = append(ts, sec(b.minT)), append(vs, b.minV)
		case b.minT.Before(b.maxT):
			ts, vs = append(ts, sec(b.minT), sec(b.maxT)), append(vs, b.minV, b.maxV)
		default:
			ts, vs = append(ts, sec(b.maxT), sec(b.minT)), append(vs, b.maxV, b.minV)
		}
	}
	return ts, vs
}

// --- audit: what left my site ---

type auditRow struct {
	Rec      store.SnapshotRecord
	Topic    string
	Size     int
	Included bool
	LeafHash string
}

// Agent reports whether an HTTPS agent posted the snapshot (TLS-protected,
// not signed end to end; package agent) rather than a gateway sealing it.
func (a auditRow) Agent() bool { return a.Rec.Provenance() == store.ProvenanceAgentTLS }

// agentExchange is where HTTPS agents post what becomes their snapshots:
// the "topic" of those rows.
const agentExchange = agent.MindConnectPrefix + "/exchange"

// snapshotTopic is where a snapshot arrived: its gateway's MQTT topic, or
// the agents' exchange.
func snapshotTopic(rec store.SnapshotRecord) string {
	if rec.Provenance() == store.ProvenanceAgentTLS {
		return agentExchange
	}
	return topic.SnapshotsOf(rec.Gateway)
}

type auditView struct {
	Rows                         []auditRow
	From, To                     time.Time
	FromText, ToText             string
	HeadSize                     uint64
	HasHead                      bool
	NextURL                      string
	ExportURL, VerifyCmd, RootCA string
	Audit                        []store.AuditEntry
	Messages                     messagesView
}

const auditPageSize = 100

func (c *Console) auditView(w http.ResponseWriter, r *http.Request, v *Viewer) {
	q := r.URL.Query()
	to := c.now().UTC().Truncate(time.Second).Add(time.Second)
	from := to.Add(-24 * time.Hour)
	var err error
	if s := q.Get("from"); s != "" {
		if from, err = time.Parse(time.RFC3339, s); err != nil {
			c.badInput(w, r, v, fmt.Sprintf("from %q: an RFC 3339 time such as 2026-11-22T08:00:00Z", s))
			return
		}
	}
	if s := q.Get("to"); s != "" {
		if to, err = time.Parse(time.RFC3339, s); err != nil {
			c.badInput(w, r, v, fmt.Sprintf("to %q: an RFC 3339 time such as 2026-11-22T08:00:00Z", s))
			return
		}
	}
	if !from.Before(to) {
		c.badInput(w, r, v, "from must be before to")
		return
	}
	sq := store.SnapshotQuery{Scope: v.Scope, From: from, To: to, Limit: auditPageSize}
	if s := q.Get("after"); s != "" {
		cur, err := decodeAuditCursor(s)
		if err != nil {
			c.badInput(w, r, v, "after: "+err.Error())
			return
		}
		sq.After = cur
	}
	ctx := r.Context()
	av := auditView{From: from, To: to, FromText: from.UTC().Format(time.RFC3339), ToText: to.UTC().Format(time.RFC3339)}
	if th, err := c.opts.Store.LatestTreeHead(ctx); err == nil {
		av.HeadSize, av.HasHead = th.Size, true
	} else if !errors.Is(err, store.ErrNotFound) {
		c.serverError(w, r, v, err)
		return
	}
	recs, err := c.opts.Store.QuerySnapshots(ctx, sq)
	if err != nil {
		c.serverError(w, r, v, err)
		return
	}
	for _, rec := range recs {
		if !v.CanRead(rec.Gateway) {
			continue
		}
		enc, err := snapshot.Encode(rec.Snapshot())
		if err != nil {
			c.serverError(w, r, v, err)
			return
		}
		av.Rows = append(av.Rows, auditRow{Rec: rec, Topic: snapshotTopic(rec), Size: len(enc), Included: av.HasHead && rec.LedgerIndex < av.HeadSize, LeafHash: leafHash(rec)})
	}
	window := url.Values{"from": {av.FromText}, "to": {av.ToText}}
	if len(recs) == auditPageSize {
		nv := url.Values{"from": {av.FromText}, "to": {av.ToText}, "after": {encodeAuditCursor(recs[len(recs)-1].Cursor())}}
		av.NextURL = "/audit?" + nv.Encode()
	}
	if av.Messages, err = c.deviceMessages(ctx, v, q, window, av.HeadSize, av.HasHead); err != nil {
		if errors.Is(err, errBadInput) {
			c.badInput(w, r, v, strings.TrimPrefix(err.Error(), errBadInput.Error()+": "))
			return
		}
		c.serverError(w, r, v, err)
		return
	}
	av.ExportURL = "/ui/api/v1/export?" + window.Encode()
	av.VerifyCmd = "fieldtrust ledger verify --e2e-root e2e-root.pem --export export.json"
	av.RootCA = "/ca/e2e.pem"
	if av.Audit, err = c.opts.Store.AuditLog(ctx, v.User.Scope, 0, 50); err != nil {
		c.serverError(w, r, v, err)
		return
	}
	c.Render(w, r, v, "audit", "What left my site", av)
}

// The audit page's cursor: time in milliseconds, gateway, device, seq.
func encodeAuditCursor(cur *store.Cursor) string {
	return strconv.FormatInt(cur.Time.UnixMilli(), 10) + "~" + cur.Gateway + "~" + cur.Device + "~" + strconv.FormatUint(cur.Seq, 10)
}

func decodeAuditCursor(s string) (*store.Cursor, error) {
	parts := strings.Split(s, "~")
	if len(parts) != 4 {
		return nil, errors.New("not a cursor from this page's Next link")
	}
	ms, err1 := strconv.ParseInt(parts[0], 10, 64)
	seq, err2 := strconv.ParseUint(parts[3], 10, 64)
	gw, dev, err3 := gatewayOf(parts[1] + "/" + parts[2])
	if err1 != nil || err2 != nil || err3 != nil {
		return nil, errors.New("not a cursor from this page's Next link")
	}
	return &store.Cursor{Time: time.UnixMilli(ms).UTC(), Gateway: gw, Device: dev, Seq: seq}, nil
}

// --- ledger ---

type ledgerView struct {
	Head    store.TreeHead
	HasHead bool
	History []store.TreeHead
	Older   string
	Hash    string
}

func (c *Console) ledgerView(w http.ResponseWriter, r *http.Request, v *Viewer) {
	var before uint64
	if s := r.URL.Query().Get("before"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil || n == 0 {
			c.badInput(w, r, v, "before: a positive tree size")
			return
		}
		before = n
	}
	hash := r.URL.Query().Get("hash")
	if hash != "" && (len(hash) != 64 || strings.Trim(hash, "0123456789abcdef") != "") {
		c.badInput(w, r, v, "hash: 64 lower-case hex digits of a snapshot's SHA-256")
		return
	}
	ctx := r.Context()
	lv := ledgerView{Hash: hash}
	th, err := c.opts.Store.LatestTreeHead(ctx)
	switch {
	case err == nil:
		lv.Head, lv.HasHead = th, true
	case !errors.Is(err, store.ErrNotFound):
		c.serverError(w, r, v, err)
		return
	}
	if lv.History, err = c.opts.Store.TreeHeads(ctx, before, 50); err != nil {
		c.serverError(w, r, v, err)
		return
	}
	if len(lv.History) == 50 {
		lv.Older = "/ledger?before=" + strconv.FormatUint(lv.History[49].Size, 10)
	}
	c.Render(w, r, v, "ledger", "Ledger", lv)
}
