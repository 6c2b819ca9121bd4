package console

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"

	"github.com/fieldtrust/fieldtrust/internal/devicemsg"
	"github.com/fieldtrust/fieldtrust/internal/firmware"
	"github.com/fieldtrust/fieldtrust/internal/firmware/campaignapi"
	"github.com/fieldtrust/fieldtrust/internal/firmware/rollout"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// FirmwareStore is what the way back's views read (issue 12): the
// campaigns, as the campaign API reads them, and the device messages, as
// the messages API reads them. The console only reads.
type FirmwareStore interface {
	campaignapi.Store
	DeviceMessages(ctx context.Context, f store.MessageFilter) ([]store.DeviceMessage, error)
}

// registerFirmware adds the campaign pages. Who sees a campaign is the
// campaign API's rule (campaignapi.MayOrder): the vendor's scope only, and
// there only campaigns whose every gateway the viewer's role may order.
func (c *Console) registerFirmware() {
	list, one := c.steeringActions()
	c.pages.Add(Page{Path: "/firmware", Title: "Firmware", Nav: true, Order: 40, VendorOnly: true, Handle: c.campaignsView, Actions: list})
	c.pages.Add(Page{Path: "/firmware/{id}", Title: "Campaign", Order: 41, VendorOnly: true, Handle: c.campaignView, Actions: one})
}

// --- device messages on the audit page ---

type messageRow struct {
	M                       store.DeviceMessage
	Outbound                bool
	Topic                   string
	Size                    int
	ContentHash, RecordHash string
	Recorded, Included      bool
}

type messagesView struct {
	Shown    bool // the viewer may read the scope's messages and the store has them
	Rows     []messageRow
	Kind     string
	Kinds    []string
	NextURL  string
	FirstURL string
}

// messageKinds are the kinds a viewer may filter by ("" for all).
var messageKinds = []string{"", devicemsg.KindCommand, devicemsg.KindNotice, devicemsg.KindDownload, devicemsg.KindResult, devicemsg.KindStatus, devicemsg.KindRefusal}

const messagesPageSize = 100

// deviceMessages reads a page of what was sent to the viewer's devices and
// what they answered (query: kind, msgs_after), scoped by the messages
// API's rule (devicemsg.MayRead) and the store's scope. keep are the
// page's other parameters, carried by the links.
func (c *Console) deviceMessages(ctx context.Context, v *Viewer, q url.Values, keep url.Values, head uint64, hasHead bool) (messagesView, error) {
	mv := messagesView{Kind: q.Get("kind"), Kinds: messageKinds}
	if !slices.Contains(messageKinds, mv.Kind) {
		return mv, fmt.Errorf("%w: kind %q: one of command, notice, download, result, status, refusal", errBadInput, mv.Kind)
	}
	var after int64
	if s := q.Get("msgs_after"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return mv, fmt.Errorf("%w: msgs_after: a message's sequence number from this page's Next link", errBadInput)
		}
		after = n
	}
	if c.opts.Firmware == nil || !devicemsg.MayRead(v.grants, v.Subject, v.Scope) {
		return mv, nil
	}
	msgs, err := c.opts.Firmware.DeviceMessages(ctx, store.MessageFilter{Scope: v.Scope, Kind: mv.Kind, After: after, Limit: messagesPageSize})
	if err != nil {
		return mv, err
	}
	mv.Shown = true
	for _, m := range msgs {
		body := sha256.Sum256(m.Body)
		rh := devicemsg.RecordHash(m)
		mv.Rows = append(mv.Rows, messageRow{M: m, Outbound: devicemsg.Outbound(m.Kind), Topic: devicemsg.TopicOf(m), Size: len(m.Body),
			ContentHash: hex.EncodeToString(body[:]), RecordHash: hex.EncodeToString(rh[:]),
			Recorded: m.LedgerIndex >= 0, Included: hasHead && m.LedgerIndex >= 0 && uint64(m.LedgerIndex) < head})
	}
	link := func(after int64) string {
		nv := url.Values{}
		for k, vs := range keep {
			nv[k] = vs
		}
		if mv.Kind != "" {
			nv.Set("kind", mv.Kind)
		}
		if after > 0 {
			nv.Set("msgs_after", strconv.FormatInt(after, 10))
		}
		return "/audit?" + nv.Encode()
	}
	if len(msgs) == messagesPageSize {
		mv.NextURL = link(msgs[len(msgs)-1].Seq)
	}
	if after > 0 {
		mv.FirstURL = link(0)
	}
	return mv, nil
}

// errBadInput marks a parameter the user got wrong (a 400).
var errBadInput = errors.New("bad input")

// --- campaigns ---

type campaignRow struct {
	C                store.Campaign
	Total, Installed int
	Failed, InFlight int
	Percent          int
	Counts           []stateCount
}

type stateCount struct {
	State string
	N     int
}

type campaignsView struct {
	Steer            bool   // the viewer may create campaigns here
	Request          string // the forms' request id (see formOnce)
	Rows             []campaignRow
	State            string
	States           []string
	Page             int
	PrevURL, NextURL string
}

var campaignStates = []string{"", rollout.Running, rollout.Paused, rollout.Aborting, rollout.Aborted, rollout.Completed}

// deviceStates are the per-gateway states in the order a gateway passes
// them (the order counts are shown in).
var deviceStates = []string{firmware.Pending, firmware.Notified, firmware.Downloading, firmware.Verifying, firmware.Installing, firmware.Installed, firmware.Failed}

const campaignsPageSize = 50

// visible returns the campaign's report if the viewer may see it (the
// campaign API's rule), ok false otherwise.
func (c *Console) visible(ctx context.Context, v *Viewer, id string) (rollout.Report, bool, error) {
	rep, err := rollout.Status(ctx, c.opts.Firmware, id)
	if errors.Is(err, store.ErrNotFound) {
		return rep, false, nil
	}
	if err != nil {
		return rep, false, err
	}
	paths := make([]string, len(rep.Devices))
	for i, d := range rep.Devices {
		paths[i] = d.Path
	}
	_, ok := campaignapi.MayOrder(v.grants, v.Subject, paths)
	return rep, ok, nil
}

func progress(rep rollout.Report) campaignRow {
	row := campaignRow{Total: len(rep.Devices), Installed: rep.Counts[firmware.Installed], Failed: rep.Counts[firmware.Failed]}
	row.InFlight = row.Total - row.Installed - row.Failed - rep.Counts[firmware.Pending]
	if row.Total > 0 {
		row.Percent = 100 * (row.Installed + row.Failed) / row.Total
	}
	for _, s := range deviceStates {
		if n := rep.Counts[s]; n > 0 {
			row.Counts = append(row.Counts, stateCount{s, n})
		}
	}
	return row
}

func (c *Console) campaignsView(w http.ResponseWriter, r *http.Request, v *Viewer) {
	q := r.URL.Query()
	cv := campaignsView{State: q.Get("state"), States: campaignStates, Steer: c.maySteer(v), Request: devicemsg.NewID()}
	if !slices.Contains(campaignStates, cv.State) {
		c.badInput(w, r, v, fmt.Sprintf("state %q: one of running, paused, aborting, aborted, completed", cv.State))
		return
	}
	page, err := pageParam(q.Get("page"))
	if err != nil {
		c.badInput(w, r, v, err.Error())
		return
	}
	cv.Page = page
	var states []string
	if cv.State != "" {
		states = append(states, cv.State)
	}
	ctx := r.Context()
	all, err := c.opts.Firmware.Campaigns(ctx, states...)
	if err != nil {
		c.serverError(w, r, v, err)
		return
	}
	slices.Reverse(all) // newest first
	skip := (page - 1) * campaignsPageSize
	for _, camp := range all {
		if len(cv.Rows) > campaignsPageSize {
			break
		}
		rep, ok, err := c.visible(ctx, v, camp.ID)
		if err != nil {
			c.serverError(w, r, v, err)
			return
		}
		if !ok {
			continue
		}
		if skip > 0 {
			skip--
			continue
		}
		row := progress(rep)
		row.C = camp
		cv.Rows = append(cv.Rows, row)
	}
	link := func(p int) string {
		nv := url.Values{"page": {strconv.Itoa(p)}}
		if cv.State != "" {
			nv.Set("state", cv.State)
		}
		return "/firmware?" + nv.Encode()
	}
	if len(cv.Rows) > campaignsPageSize {
		cv.Rows = cv.Rows[:campaignsPageSize]
		cv.NextURL = link(page + 1)
	}
	if page > 1 {
		cv.PrevURL = link(page - 1)
	}
	c.Render(w, r, v, "campaigns", "Firmware", cv)
}

type campaignView struct {
	Steer            bool
	Request          string
	C                store.Campaign
	Progress         campaignRow
	Devices          []rollout.DeviceReport
	Page             int
	PrevURL, NextURL string
}

const campaignDevicesPageSize = 100

func (c *Console) campaignView(w http.ResponseWriter, r *http.Request, v *Viewer) {
	id := r.PathValue("id")
	page, err := pageParam(r.URL.Query().Get("page"))
	if err != nil {
		c.badInput(w, r, v, err.Error())
		return
	}
	ctx := r.Context()
	rep, ok, err := c.visible(ctx, v, id)
	if err != nil {
		c.serverError(w, r, v, err)
		return
	}
	if !ok {
		c.fail(w, r, v, http.StatusNotFound, "No such campaign in your scope.")
		return
	}
	camp, err := c.opts.Firmware.Campaign(ctx, id)
	if err != nil {
		c.serverError(w, r, v, err)
		return
	}
	cv := campaignView{C: camp, Progress: progress(rep), Page: page, Steer: c.maySteer(v), Request: devicemsg.NewID()}
	from := min((page-1)*campaignDevicesPageSize, len(rep.Devices))
	to := min(from+campaignDevicesPageSize, len(rep.Devices))
	cv.Devices = rep.Devices[from:to]
	base := "/firmware/" + url.PathEscape(id) + "?page="
	if to < len(rep.Devices) {
		cv.NextURL = base + strconv.Itoa(page+1)
	}
	if page > 1 {
		cv.PrevURL = base + strconv.Itoa(page-1)
	}
	c.Render(w, r, v, "campaign", "Campaign "+id, cv)
}

// maySteer reports whether the campaign pages offer their actions to the
// viewer (the actions check again, with the campaign API's rule).
func (c *Console) maySteer(v *Viewer) bool {
	return c.opts.Devices != nil && c.opts.FirmwareRepo != nil && v.Vendor() && v.Has(store.RoleOperator)
}
