package console

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
	"github.com/fieldtrust/fieldtrust/internal/web"
)

// RulesStore is what the alarms and tasks pages use of the rules' store
// (the same calls as /api/v1/alarms and /api/v1/tasks).
type RulesStore interface {
	Alarms(ctx context.Context, q store.AlarmQuery) ([]store.Alarm, error)
	Alarm(ctx context.Context, id string) (store.Alarm, error)
	AckAlarm(ctx context.Context, id, by string, at time.Time) (store.Alarm, error)
	ClearAlarm(ctx context.Context, id, by string, at time.Time) (store.Alarm, error)
	Tasks(ctx context.Context, q store.TaskQuery) ([]store.Task, error)
	Task(ctx context.Context, id string) (store.Task, error)
	UpdateTask(ctx context.Context, id string, u store.TaskUpdate) (store.Task, error)
}

// registerRules adds the alarms and tasks pages: everyone in scope sees
// them; operators acknowledge and clear alarms and work on tasks.
func (c *Console) registerRules() {
	c.pages.Add(Page{Path: "/alarms", Title: "Alarms", Nav: true, Order: 25, Handle: c.alarmsView,
		Actions: []Action{
			{Path: "/alarms/ack", MinRole: store.RoleOperator, Handle: c.alarmChange(false)},
			{Path: "/alarms/clear", MinRole: store.RoleOperator, Handle: c.alarmChange(true)},
		}})
	c.pages.Add(Page{Path: "/tasks", Title: "Tasks", Nav: true, Order: 26, Handle: c.tasksView,
		Actions: []Action{{Path: "/tasks/update", MinRole: store.RoleOperator, Handle: c.taskUpdate}}})
	c.pages.Add(Page{Path: "/tasks/{id}", Title: "Task", Order: 27, Handle: c.taskView})
}

const rulesListLimit = 200

// alarmStatesShown are the alarm list's filters, as the API takes them.
var alarmStatesShown = []string{"open", store.AlarmActive, store.AlarmAcknowledged, store.AlarmCleared, ""}

type alarmsView struct {
	Alarms  []store.Alarm
	State   string
	States  []string
	Message string
	Operate bool // the viewer may acknowledge and clear
	status  int
}

func (c *Console) alarmsView(w http.ResponseWriter, r *http.Request, v *Viewer) {
	state := r.URL.Query().Get("state")
	if !r.URL.Query().Has("state") {
		state = "open"
	}
	if !web.AlarmStateFilter(state) {
		c.badInput(w, r, v, "state: open, active, acknowledged, cleared, or empty for all")
		return
	}
	c.renderAlarms(w, r, v, alarmsView{State: state})
}

func (c *Console) renderAlarms(w http.ResponseWriter, r *http.Request, v *Viewer, av alarmsView) {
	list, err := c.opts.Rules.Alarms(r.Context(), store.AlarmQuery{Scope: v.Scope, State: av.State, Limit: rulesListLimit})
	if err != nil {
		c.serverError(w, r, v, err)
		return
	}
	for _, a := range list {
		if v.CanRead(a.Gateway) { // the store scoped it; TACS has the last word
			av.Alarms = append(av.Alarms, a)
		}
	}
	av.States, av.Operate = alarmStatesShown, v.Has(store.RoleOperator)
	status := http.StatusOK
	if av.status != 0 {
		status = av.status
	}
	c.render(w, r, v, status, "alarms", "Alarms", av)
}

// alarmChange acknowledges or clears the alarm of form field id, if the
// viewer may read its gateway; the person is recorded as who did it.
func (c *Console) alarmChange(clear bool) func(http.ResponseWriter, *http.Request, *Viewer) {
	action, verb := "alarm-ack", "acknowledged"
	if clear {
		action, verb = "alarm-clear", "cleared"
	}
	return func(w http.ResponseWriter, r *http.Request, v *Viewer) {
		id := r.PostFormValue("id")
		a, err := c.opts.Rules.Alarm(r.Context(), id)
		if errors.Is(err, store.ErrNotFound) || (err == nil && (!store.InScope(v.Scope, a.Gateway) || !v.CanRead(a.Gateway))) {
			c.fail(w, r, v, http.StatusNotFound, "No such alarm.")
			return
		}
		if err != nil {
			c.serverError(w, r, v, err)
			return
		}
		change := c.opts.Rules.AckAlarm
		if clear {
			change = c.opts.Rules.ClearAlarm
		}
		before := a
		a, err = change(r.Context(), a.ID, v.User.Email, c.now())
		if errors.Is(err, store.ErrConflict) {
			c.audit(r, v.User.Email, before.Gateway, action, before.ID, err.Error(), false)
			c.renderAlarms(w, r, v, alarmsView{State: "", status: http.StatusConflict, Message: fmt.Sprintf("The alarm was not %s: it is %s.", verb, before.State)})
			return
		}
		if err != nil {
			c.serverError(w, r, v, err)
			return
		}
		c.audit(r, v.User.Email, a.Gateway, action, a.ID, a.RuleName+": "+a.Summary, true)
		c.renderAlarms(w, r, v, alarmsView{State: "open", Message: fmt.Sprintf("Alarm %q on %s %s.", a.RuleName, a.Device, verb)})
	}
}

type tasksView struct {
	Tasks   []store.Task
	State   string
	States  []string
	Task    store.Task // the task page
	Message string
	Operate bool
}

var taskStatesShown = []string{store.TaskOpen, store.TaskInProgress, store.TaskDone}

func (c *Console) tasksView(w http.ResponseWriter, r *http.Request, v *Viewer) {
	state := r.URL.Query().Get("state")
	if state != "" && web.CheckTaskUpdate(state, "", "") != nil {
		c.badInput(w, r, v, "state: open, in_progress, done, or empty for all")
		return
	}
	list, err := c.opts.Rules.Tasks(r.Context(), store.TaskQuery{Scope: v.Scope, State: state, Limit: rulesListLimit})
	if err != nil {
		c.serverError(w, r, v, err)
		return
	}
	tv := tasksView{State: state, States: taskStatesShown}
	for _, t := range list {
		if v.CanRead(t.Gateway) {
			tv.Tasks = append(tv.Tasks, t)
		}
	}
	c.Render(w, r, v, "tasks", "Tasks", tv)
}

// taskFor finds a task the viewer may read; otherwise it answers 404 (the
// same whether the task exists elsewhere or not at all).
func (c *Console) taskFor(w http.ResponseWriter, r *http.Request, v *Viewer, id string) (store.Task, bool) {
	t, err := c.opts.Rules.Task(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) || (err == nil && (!store.InScope(v.Scope, t.Gateway) || !v.CanRead(t.Gateway))) {
		c.fail(w, r, v, http.StatusNotFound, "No such task.")
		return t, false
	}
	if err != nil {
		c.serverError(w, r, v, err)
		return t, false
	}
	return t, true
}

func (c *Console) taskView(w http.ResponseWriter, r *http.Request, v *Viewer) {
	if t, ok := c.taskFor(w, r, v, r.PathValue("id")); ok {
		c.Render(w, r, v, "task", "Task", tasksView{Task: t, States: taskStatesShown, Operate: v.Has(store.RoleOperator)})
	}
}

// taskUpdate changes a task's state or assignee and adds a comment, by the
// API's rule (web.CheckTaskUpdate); the person is the comment's author.
func (c *Console) taskUpdate(w http.ResponseWriter, r *http.Request, v *Viewer) {
	t, ok := c.taskFor(w, r, v, r.PostFormValue("id"))
	if !ok {
		return
	}
	state, assignee, comment := r.PostFormValue("state"), strings.TrimSpace(r.PostFormValue("assignee")), strings.TrimSpace(r.PostFormValue("comment"))
	if err := web.CheckTaskUpdate(state, assignee, comment); err != nil {
		c.badInput(w, r, v, err.Error())
		return
	}
	if (state == "" || state == t.State) && (assignee == "" || assignee == t.Assignee) && comment == "" {
		c.badInput(w, r, v, "Nothing to change: pick another state or assignee, or write a comment.")
		return
	}
	now := c.now()
	u := store.TaskUpdate{State: state, Assignee: assignee, At: now}
	if comment != "" {
		u.Comment = &store.TaskComment{Author: v.User.Email, Text: comment, At: now}
	}
	before := t
	t, err := c.opts.Rules.UpdateTask(r.Context(), t.ID, u)
	if err != nil {
		c.serverError(w, r, v, err)
		return
	}
	var what []string
	if state != "" && state != before.State {
		what = append(what, "state "+state)
	}
	if assignee != "" && assignee != before.Assignee {
		what = append(what, "assignee "+assignee)
	}
	if comment != "" {
		what = append(what, "a comment")
	}
	c.audit(r, v.User.Email, t.Gateway, "task-update", t.ID, strings.Join(what, ", "), true)
	c.Render(w, r, v, "task", "Task", tasksView{Task: t, States: taskStatesShown, Operate: true, Message: "Task updated: " + strings.Join(what, ", ") + "."})
}
