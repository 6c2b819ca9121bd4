package console

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/command"
	"github.com/fieldtrust/fieldtrust/internal/devicemsg"
	"github.com/fieldtrust/fieldtrust/internal/firmware/campaignapi"
	"github.com/fieldtrust/fieldtrust/internal/firmware/rollout"
	"github.com/fieldtrust/fieldtrust/internal/firmware/tufrepo"
	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// DeviceActions is what the console's campaign and command actions use
// of the platform (the API's commander): a command a person asks for is
// signed by the platform's e2e identity (service:platform) — a browser
// holds no e2e key — and its record names the person as the requester,
// as the API's names the requesting service; the console's audit log
// names the person too.
type DeviceActions interface {
	// SendCommand signs, seals and queues cmd, recording requester.
	SendCommand(ctx context.Context, cmd command.Command, requester string) error
	// CommandResult verifies that the gateway signed a result record and
	// decodes it.
	CommandResult(ctx context.Context, m store.DeviceMessage) (command.Result, error)
	// Wake tells the device messaging service to look now.
	Wake()
}

// consoleCommands are the commands the console offers (the gateway's
// built-ins; more with the CLI or the API).
var consoleCommands = []string{command.Reboot, command.Clean, command.SetInterval}

// Requester is how a console user is named as the requester of what the
// platform signs for them.
func Requester(email string) string { return "console:" + email }

// registerSteering adds the campaign actions (create, pause, resume,
// abort) and the commands pages: for users of the vendor's scope with the
// operator role, decided by the API's rules (campaignapi.MayOrder,
// devicemsg.MayCommand) with the viewer's subject.
func (c *Console) registerSteering() {
	c.pages.Add(Page{Path: "/commands", Title: "Commands", Nav: true, Order: 42, VendorOnly: true, Handle: c.commandsView,
		Actions: []Action{{Path: "/commands/send", MinRole: store.RoleOperator, VendorOnly: true, Handle: c.commandSend}}})
	c.pages.Add(Page{Path: "/commands/{id}", Title: "Command", Order: 43, VendorOnly: true, Handle: c.commandView})
}

// steeringActions are the campaign pages' actions.
func (c *Console) steeringActions() (list, one []Action) {
	if c.opts.Devices == nil || c.opts.FirmwareRepo == nil {
		return nil, nil
	}
	return []Action{{Path: "/firmware/create", MinRole: store.RoleOperator, VendorOnly: true, Handle: c.campaignCreate}},
		[]Action{{Path: "/firmware/{id}/{move}", MinRole: store.RoleOperator, VendorOnly: true, Handle: c.campaignMove}}
}

// --- replayed requests ---

// formOnce remembers the request ids of the forms that were acted on: a
// form carries a fresh id (rendered with the page), and a request that
// presents an id again — a resubmitted or replayed POST — is refused
// (409) instead of sending a second command or creating a second
// campaign. Ids are kept for a session's lifetime, at most maxOnce (the
// oldest go first; a replay older than that is still bound by the
// session's CSRF token and lifetime).
type formOnce struct {
	mu   sync.Mutex
	seen map[string]time.Time
	ttl  time.Duration
}

const maxOnce = 100_000

var requestID = regexp.MustCompile(`^[0-9a-f]{16}$`)

// use marks id as used; false if it was (or is malformed).
func (f *formOnce) use(id string, now time.Time) bool {
	if !requestID.MatchString(id) {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.seen == nil {
		f.seen = map[string]time.Time{}
	}
	if _, dup := f.seen[id]; dup {
		return false
	}
	if len(f.seen) >= maxOnce {
		for k, at := range f.seen {
			if now.Sub(at) > f.ttl {
				delete(f.seen, k)
			}
		}
		for k := range f.seen { // still full: forget one at random
			if len(f.seen) < maxOnce {
				break
			}
			delete(f.seen, k)
		}
	}
	f.seen[id] = now
	return true
}

// once checks the form's request id; it has answered when false.
func (c *Console) once(w http.ResponseWriter, r *http.Request, v *Viewer, what string) bool {
	if c.forms.use(r.PostFormValue("request"), c.now()) {
		return true
	}
	c.audit(r, v.User.Email, v.User.Scope, what, r.PostFormValue("request"), "refused: the form was submitted before (or has no request id)", false)
	c.fail(w, r, v, http.StatusConflict, "Refused: this form was submitted already. Open the page again to send a new request.")
	return false
}

// --- campaigns ---

func (c *Console) campaignCreate(w http.ResponseWriter, r *http.Request, v *Viewer) {
	canary, err1 := formInt(r, "canary_percent")
	maxFail, err2 := formInt(r, "max_failures")
	if err := errors.Join(err1, err2); err != nil {
		c.badInput(w, r, v, err.Error())
		return
	}
	spec := rollout.Spec{Version: strings.TrimSpace(r.PostFormValue("version")), DeviceType: strings.TrimSpace(r.PostFormValue("device_type")),
		Scope:         strings.FieldsFunc(r.PostFormValue("scope"), func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\r' }),
		CanaryPercent: canary, MaxFailures: maxFail}
	if spec.Version == "" || spec.DeviceType == "" {
		c.badInput(w, r, v, "version and device type are required")
		return
	}
	if !c.once(w, r, v, "campaign-create") {
		return
	}
	camp, err := campaignapi.Create(r.Context(), c.opts.Firmware, c.opts.FirmwareRepo, v.grants, v.Subject, spec)
	detail := fmt.Sprintf("%s %s to %s", spec.DeviceType, spec.Version, strings.Join(spec.Scope, ", "))
	switch {
	case errors.Is(err, campaignapi.ErrForbidden):
		c.audit(r, v.User.Email, v.User.Scope, "campaign-create", "", detail+": "+err.Error(), false)
		c.fail(w, r, v, http.StatusForbidden, "Refused: "+err.Error())
		return
	case errors.Is(err, rollout.ErrSpec), errors.Is(err, tufrepo.ErrNotFound):
		c.audit(r, v.User.Email, v.User.Scope, "campaign-create", "", detail+": "+err.Error(), false)
		c.badInput(w, r, v, err.Error())
		return
	case err != nil:
		c.serverError(w, r, v, err)
		return
	}
	c.opts.Devices.Wake()
	c.audit(r, v.User.Email, v.User.Scope, "campaign-create", camp.ID, detail, true)
	c.log.Info("campaign created from the console", "id", camp.ID, "by", v.User.Email)
	http.Redirect(w, r, "/firmware/"+url.PathEscape(camp.ID), http.StatusSeeOther)
}

func (c *Console) campaignMove(w http.ResponseWriter, r *http.Request, v *Viewer) {
	id, move := r.PathValue("id"), r.PathValue("move")
	if move != "pause" && move != "resume" && move != "abort" {
		c.fail(w, r, v, http.StatusNotFound, "No such action: pause, resume or abort.")
		return
	}
	if !c.once(w, r, v, "campaign-"+move) {
		return
	}
	_, err := campaignapi.Move(r.Context(), c.opts.Firmware, v.grants, v.Subject, id, move)
	switch {
	case errors.Is(err, store.ErrNotFound):
		c.fail(w, r, v, http.StatusNotFound, "No such campaign in your scope.")
		return
	case errors.Is(err, rollout.ErrState):
		c.audit(r, v.User.Email, v.User.Scope, "campaign-"+move, id, err.Error(), false)
		c.fail(w, r, v, http.StatusConflict, "The campaign was not changed: "+err.Error()+".")
		return
	case err != nil:
		c.serverError(w, r, v, err)
		return
	}
	c.opts.Devices.Wake()
	c.audit(r, v.User.Email, v.User.Scope, "campaign-"+move, id, "", true)
	c.log.Info("campaign "+move+" from the console", "id", id, "by", v.User.Email)
	http.Redirect(w, r, "/firmware/"+url.PathEscape(id), http.StatusSeeOther)
}

func formInt(r *http.Request, name string) (int, error) {
	s := strings.TrimSpace(r.PostFormValue(name))
	if s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 1_000_000 {
		return 0, fmt.Errorf("%s %q: want a whole number from 0", strings.ReplaceAll(name, "_", " "), s)
	}
	return n, nil
}

// --- commands ---

type commandRow struct {
	M      store.DeviceMessage
	Result *resultView
}

type resultView struct {
	M        store.DeviceMessage
	R        command.Result
	Verified bool
	Problem  string
}

type commandsView struct {
	Rows     []commandRow
	Commands []string
	Gateway  string
	Request  string
	Operate  bool
	NextURL  string
}

const commandsPageSize = 100

func (c *Console) commandsView(w http.ResponseWriter, r *http.Request, v *Viewer) {
	q := r.URL.Query()
	var after int64
	if s := q.Get("after"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			c.badInput(w, r, v, "after: a command's sequence number from this page's Next link")
			return
		}
		after = n
	}
	gw := q.Get("gateway")
	if gw != "" {
		if p, err := pki.ParsePath(gw); err != nil || len(p) != 3 {
			c.badInput(w, r, v, fmt.Sprintf("gateway %q: want master/account/gateway", gw))
			return
		}
	}
	cv := commandsView{Commands: consoleCommands, Gateway: gw, Request: devicemsg.NewID(), Operate: v.Has(store.RoleOperator)}
	msgs, err := c.opts.Firmware.DeviceMessages(r.Context(), store.MessageFilter{Scope: v.Scope, Kind: devicemsg.KindCommand, After: after, Limit: commandsPageSize})
	if err != nil {
		c.serverError(w, r, v, err)
		return
	}
	for _, m := range msgs {
		if v.CanRead(m.Gateway) {
			cv.Rows = append(cv.Rows, commandRow{M: m})
		}
	}
	if len(msgs) == commandsPageSize {
		cv.NextURL = "/commands?after=" + strconv.FormatInt(msgs[len(msgs)-1].Seq, 10)
	}
	c.Render(w, r, v, "commands", "Commands", cv)
}

type commandView struct {
	Cmd     store.DeviceMessage
	Results []resultView
}

func (c *Console) commandView(w http.ResponseWriter, r *http.Request, v *Viewer) {
	id := r.PathValue("id")
	ctx := r.Context()
	cmds, err := c.opts.Firmware.DeviceMessages(ctx, store.MessageFilter{Scope: v.Scope, Kind: devicemsg.KindCommand, Ref: id, Limit: 1})
	if err != nil {
		c.serverError(w, r, v, err)
		return
	}
	if len(cmds) == 0 || !v.CanRead(cmds[0].Gateway) {
		c.fail(w, r, v, http.StatusNotFound, "No such command in your scope.")
		return
	}
	cv := commandView{Cmd: cmds[0]}
	res, err := c.opts.Firmware.DeviceMessages(ctx, store.MessageFilter{Scope: v.Scope, Kind: devicemsg.KindResult, Ref: id, Limit: 10})
	if err != nil {
		c.serverError(w, r, v, err)
		return
	}
	for _, m := range res {
		if m.Gateway != cv.Cmd.Gateway {
			continue
		}
		rv := resultView{M: m}
		if c.opts.Devices == nil {
			rv.Problem = "results cannot be verified here"
		} else if rv.R, err = c.opts.Devices.CommandResult(ctx, m); err != nil {
			rv.Problem = err.Error()
		} else {
			rv.Verified = true
		}
		cv.Results = append(cv.Results, rv)
	}
	c.Render(w, r, v, "command", "Command "+id, cv)
}

func (c *Console) commandSend(w http.ResponseWriter, r *http.Request, v *Viewer) {
	gw, name := strings.TrimSpace(r.PostFormValue("gateway")), r.PostFormValue("name")
	p, err := pki.ParsePath(gw)
	if err != nil || len(p) != 3 {
		c.badInput(w, r, v, fmt.Sprintf("gateway %q: want master/account/gateway", gw))
		return
	}
	if !slices.Contains(consoleCommands, name) {
		c.badInput(w, r, v, fmt.Sprintf("command %q: one of reboot, clean, set-interval", name))
		return
	}
	var args map[string]string
	if name == command.SetInterval {
		s := strings.TrimSpace(r.PostFormValue("seconds"))
		if n, err := strconv.Atoi(s); err != nil || n < 1 || n > 86400 {
			c.badInput(w, r, v, fmt.Sprintf("seconds %q: set-interval takes 1 to 86400", s))
			return
		}
		args = map[string]string{"seconds": s}
	}
	life := command.DefaultLifetime
	if s := strings.TrimSpace(r.PostFormValue("expires_minutes")); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || time.Duration(n)*time.Minute > command.MaxLifetime {
			c.badInput(w, r, v, fmt.Sprintf("expires in %q minutes: want 1 to %d", s, int(command.MaxLifetime.Minutes())))
			return
		}
		life = time.Duration(n) * time.Minute
	}
	// The API's rule, with the viewer's subject: another tenant's gateway
	// is the same 404 as one that does not exist.
	if !store.InScope(v.Scope, p.String()) || !v.CanRead(p.String()) {
		c.fail(w, r, v, http.StatusNotFound, "No such gateway in your scope.")
		return
	}
	if !devicemsg.MayCommand(v.grants, v.Subject, p.String()) {
		c.audit(r, v.User.Email, v.User.Scope, "command", p.String(), name+": refused by the grants", false)
		c.fail(w, r, v, http.StatusForbidden, "Refused: your scope may not send commands to "+p.String()+".")
		return
	}
	if !c.once(w, r, v, "command") {
		return
	}
	cmd, err := devicemsg.NewCommand(p.String(), name, args, life, c.now())
	if err != nil {
		c.badInput(w, r, v, err.Error())
		return
	}
	err = c.opts.Devices.SendCommand(r.Context(), cmd, Requester(v.User.Email))
	switch {
	case errors.Is(err, devicemsg.ErrNoE2E):
		c.audit(r, v.User.Email, p.String(), "command", p.String(), name+": "+err.Error(), false)
		c.fail(w, r, v, http.StatusNotFound, "The gateway "+p.String()+" cannot be sent anything: "+err.Error())
		return
	case err != nil:
		c.serverError(w, r, v, err)
		return
	}
	c.audit(r, v.User.Email, p.String(), "command", p.String(), fmt.Sprintf("%s (command %s, signed by %s for %s)", name, cmd.ID, command.Signer, Requester(v.User.Email)), true)
	c.log.Info("command sent from the console", "gateway", p.String(), "name", name, "id", cmd.ID, "by", v.User.Email)
	http.Redirect(w, r, "/commands/"+url.PathEscape(cmd.ID), http.StatusSeeOther)
}
