package rules

import (
	"bytes"
	"fmt"
	"net/mail"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"text/template/parse"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/fieldtrust/fieldtrust/internal/ident"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// MaxFileSize bounds a rule file.
const MaxFileSize = 64 << 10

// Error is a problem at a place in a rule file. Its text is the
// file:line:col: message form compilers use, so editors can jump to it.
type Error struct {
	File      string
	Line, Col int // 1-based; 0 if unknown
	Msg       string
}

func (e *Error) Error() string {
	if e.Line == 0 {
		return fmt.Sprintf("%s: %s", e.File, e.Msg)
	}
	return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Col, e.Msg)
}

// Severities, lowest first.
var Severities = []string{"info", "warning", "critical"}

// Modes of a rule.
const (
	// ModeAlarm (the default) raises one alarm per device while the
	// condition holds and runs the actions when it is raised.
	ModeAlarm = "alarm"
	// ModeEach runs the actions for every snapshot the condition holds
	// on (the thesis's "normal case: mail the list"), without an alarm.
	ModeEach = "each"
)

// Integrity kinds a rule may watch: the hash-chain events of ingest and
// its rejects of a gateway's messages.
var IntegrityKinds = []string{store.EventGap, store.EventFork, store.EventStale, "reject"}

// File is a parsed, checked rule file (version 1). Compile turns it into a
// Rule that runs.
type File struct {
	Version     int
	Name        string
	Scope       string // identity path or "*"
	DeviceType  string
	Description string
	Mode        string
	Severity    string

	// Exactly one condition: When (CEL), Silent, Integrity or Overdue.
	When      Expr
	Silent    time.Duration
	Integrity []string
	Overdue   *Overdue

	For   time.Duration
	Clear Expr

	// RateLimit bounds the notifications of the rule: at most
	// RateLimit.N per RateLimit.Per; zero takes DefaultRate.
	RateLimit Rate
	Actions   []Action
}

// Expr is a CEL expression and where it starts in the file.
type Expr struct {
	Src string
	pos exprPos
}

// exprPos maps positions in an expression back to the file.
type exprPos struct {
	line, col int  // of the first character of the expression
	block     bool // a block scalar: lines after the first start at col too
}

// Overdue is the built-in maintenance condition: Channel is a counter
// that must stay below Limit, or (Date) a due time in Unix seconds that
// the snapshot's time must not pass, or (Calibration) the due date of the
// DCC of the device's instrument (docs/dcc.md "The fleet link").
type Overdue struct {
	Channel     string
	Limit       float64
	Date        bool
	Calibration bool
}

// Rate is a number of notifications per period.
type Rate struct {
	N   int
	Per time.Duration
}

// DefaultRate is a rule's rate limit unless it sets one.
var DefaultRate = Rate{N: 60, Per: time.Hour}

// Action kinds.
const (
	ActionEmail   = "email"
	ActionWebhook = "webhook"
	ActionTask    = "task"
	ActionMQTT    = "mqtt"
)

// Action is one thing a rule does when it fires.
type Action struct {
	Kind string
	// email
	To      []string
	Subject *template.Template // nil: the default subject
	// task
	Title    *template.Template
	Assignee string
	Due      time.Duration // 0: none
	// webhook
	URL    string
	Secret string // the name of a webhook endpoint (fieldtrust rule endpoint)
}

// Parse reads a rule file, YAML or JSON (JSON is YAML), strictly: unknown
// fields, duplicate keys, anchors and values of the wrong type are errors
// at their line and column. name is the file name errors carry.
func Parse(name string, data []byte) (*File, error) {
	p := &parser{file: name, lines: bytes.Split(data, []byte("\n"))}
	if len(data) > MaxFileSize {
		return nil, &Error{File: name, Msg: fmt.Sprintf("larger than %d KiB", MaxFileSize>>10)}
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		return nil, p.yamlError(err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, p.errf(&extra, "a rule file holds one document")
	}
	if len(doc.Content) != 1 {
		return nil, &Error{File: name, Msg: "empty rule file"}
	}
	f, err := p.file1(doc.Content[0])
	if err != nil {
		return nil, err
	}
	return f, nil
}

type parser struct {
	file  string
	lines [][]byte
}

func (p *parser) errf(n *yaml.Node, format string, args ...any) error {
	return &Error{File: p.file, Line: n.Line, Col: n.Column, Msg: fmt.Sprintf(format, args...)}
}

// yamlError turns the YAML library's "yaml: line N: msg" into an Error.
func (p *parser) yamlError(err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if n, after, ok := strings.Cut(rest, ": "); ok {
			if l, e := strconv.Atoi(n); e == nil {
				line, msg = l, after
			}
		}
	}
	return &Error{File: p.file, Line: line, Col: min(line, 1), Msg: msg}
}

// mapping checks n is a mapping without duplicate keys, anchors or
// aliases, and calls field for each key, which returns an error for a key
// it does not know.
func (p *parser) mapping(n *yaml.Node, what string, field func(key string, k, v *yaml.Node) error) error {
	if err := p.plain(n); err != nil {
		return err
	}
	if n.Kind != yaml.MappingNode {
		return p.errf(n, "%s: want a mapping of fields", what)
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if err := p.plain(k); err != nil {
			return err
		}
		if err := p.plain(v); err != nil {
			return err
		}
		if k.Kind != yaml.ScalarNode {
			return p.errf(k, "%s: a field name must be text", what)
		}
		if seen[k.Value] {
			return p.errf(k, "%s: field %q given twice", what, k.Value)
		}
		seen[k.Value] = true
		if err := field(k.Value, k, v); err != nil {
			return err
		}
	}
	return nil
}

// plain refuses anchors, aliases and merge keys: a rule file is data, not
// a graph (and aliases are how YAML bombs are built).
func (p *parser) plain(n *yaml.Node) error {
	if n.Kind == yaml.AliasNode || n.Anchor != "" {
		return p.errf(n, "anchors and aliases are not allowed in rule files")
	}
	if n.Tag == "!!merge" {
		return p.errf(n, "merge keys are not allowed in rule files")
	}
	return nil
}

func unknown(p *parser, k *yaml.Node, what string, known ...string) error {
	return p.errf(k, "%s: unknown field %q (known: %s)", what, k.Value, strings.Join(known, ", "))
}

func (p *parser) str(n *yaml.Node, what string) (string, error) {
	if n.Kind != yaml.ScalarNode || (n.Tag != "!!str" && n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) == 0) {
		return "", p.errf(n, "%s: want text", what)
	}
	if len(n.Value) > 4096 {
		return "", p.errf(n, "%s: longer than 4096 bytes", what)
	}
	return n.Value, nil
}

// expr reads a CEL expression: any scalar (true is a condition too).
func (p *parser) expr(n *yaml.Node, what string) (Expr, error) {
	if n.Kind != yaml.ScalarNode || n.Value == "" {
		return Expr{}, p.errf(n, "%s: want a CEL expression", what)
	}
	if len(n.Value) > MaxExprSize {
		return Expr{}, p.errf(n, "%s: longer than %d bytes", what, MaxExprSize)
	}
	e := Expr{Src: n.Value, pos: exprPos{line: n.Line, col: n.Column}}
	switch {
	case n.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0:
		// The text starts on the next non-empty line, at its indentation.
		e.pos.block = true
		for l := n.Line; l < len(p.lines); l++ {
			if line := p.lines[l]; len(bytes.TrimSpace(line)) > 0 {
				e.pos.line, e.pos.col = l+1, len(line)-len(bytes.TrimLeft(line, " "))+1
				break
			}
		}
	case n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0:
		e.pos.col++
	}
	return e, nil
}

func (p *parser) duration(n *yaml.Node, what string) (time.Duration, error) {
	s, err := p.str(n, what)
	if err != nil {
		return 0, err
	}
	d, err := ParseDuration(s)
	if err != nil {
		return 0, p.errf(n, "%s: %v", what, err)
	}
	return d, nil
}

// ParseDuration reads a Go duration (90s, 10m, 1h30m) or a number of
// days (7d). It must be positive and at most a year.
func ParseDuration(s string) (time.Duration, error) {
	var d time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil {
			return 0, fmt.Errorf("%q: use a duration such as 90s, 10m, 2h or 7d", s)
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("%q: use a duration such as 90s, 10m, 2h or 7d", s)
		}
	}
	if d <= 0 || d > 366*24*time.Hour {
		return 0, fmt.Errorf("%q: must be positive and at most a year", s)
	}
	return d, nil
}

func (p *parser) strings(n *yaml.Node, what string) ([]string, error) {
	if err := p.plain(n); err != nil {
		return nil, err
	}
	if n.Kind == yaml.ScalarNode {
		s, err := p.str(n, what)
		return []string{s}, err
	}
	if n.Kind != yaml.SequenceNode || len(n.Content) == 0 {
		return nil, p.errf(n, "%s: want a list of text", what)
	}
	var out []string
	for _, c := range n.Content {
		if err := p.plain(c); err != nil {
			return nil, err
		}
		s, err := p.str(c, what)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

var fileFields = []string{"version", "name", "scope", "device_type", "description", "mode", "severity", "when", "silent", "integrity", "overdue", "for", "clear", "rate_limit", "actions"}

func (p *parser) file1(n *yaml.Node) (*File, error) {
	f := &File{Mode: ModeAlarm, Severity: "warning"}
	var versionNode, actionsNode *yaml.Node
	var conds []*yaml.Node
	var forNode, clearNode *yaml.Node
	err := p.mapping(n, "rule", func(key string, k, v *yaml.Node) error {
		var err error
		switch key {
		case "version":
			versionNode = v
			if v.Kind != yaml.ScalarNode || v.Tag != "!!int" || v.Value != "1" {
				return p.errf(v, "version: this platform reads rule files of version 1")
			}
			f.Version = 1
		case "name":
			if f.Name, err = p.str(v, key); err == nil && ident.ValidateElement(f.Name) != nil {
				err = p.errf(v, "name %q: use 1 to 64 letters, digits, '.', '_' or '-'", f.Name)
			}
		case "scope":
			if f.Scope, err = p.str(v, key); err == nil && f.Scope != store.VendorScope {
				if _, perr := ident.SplitPath(f.Scope); perr != nil || strings.Count(f.Scope, "/") > 2 {
					err = p.errf(v, "scope %q: an identity path of 1 to 3 elements (master/account/gateway), or \"*\" for the whole fleet", f.Scope)
				}
			}
		case "device_type":
			if f.DeviceType, err = p.str(v, key); err == nil && ident.ValidateElement(f.DeviceType) != nil {
				err = p.errf(v, "device_type %q: use 1 to 64 letters, digits, '.', '_' or '-'", f.DeviceType)
			}
		case "description":
			f.Description, err = p.str(v, key)
		case "mode":
			if f.Mode, err = p.str(v, key); err == nil && f.Mode != ModeAlarm && f.Mode != ModeEach {
				err = p.errf(v, "mode %q: use alarm (default) or each", f.Mode)
			}
		case "severity":
			if f.Severity, err = p.str(v, key); err == nil && !slices.Contains(Severities, f.Severity) {
				err = p.errf(v, "severity %q: use %s", f.Severity, strings.Join(Severities, ", "))
			}
		case "when":
			conds = append(conds, k)
			f.When, err = p.expr(v, key)
		case "clear":
			clearNode = k
			f.Clear, err = p.expr(v, key)
		case "for":
			forNode = k
			f.For, err = p.duration(v, key)
		case "silent":
			conds = append(conds, k)
			f.Silent, err = p.duration(v, key)
		case "integrity":
			conds = append(conds, k)
			if f.Integrity, err = p.strings(v, key); err == nil {
				for i, kind := range f.Integrity {
					if kind == "any" && len(f.Integrity) == 1 {
						f.Integrity = IntegrityKinds
						break
					}
					if !slices.Contains(IntegrityKinds, kind) {
						err = p.errf(v, "integrity: %q (item %d): use any, or a list of %s", kind, i+1, strings.Join(IntegrityKinds, ", "))
						break
					}
				}
			}
		case "overdue":
			conds = append(conds, k)
			f.Overdue, err = p.overdue(v)
		case "rate_limit":
			f.RateLimit, err = p.rate(v)
		case "actions":
			actionsNode = v
			f.Actions, err = p.actions(v)
		default:
			return unknown(p, k, "rule", fileFields...)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	switch {
	case versionNode == nil:
		return nil, p.errf(n, "rule: the field version is required (version: 1)")
	case f.Name == "":
		return nil, p.errf(n, "rule: the field name is required")
	case f.Scope == "":
		return nil, p.errf(n, "rule: the field scope is required (an identity path, or \"*\")")
	case len(conds) == 0:
		return nil, p.errf(n, "rule: a condition is required: when (CEL), silent, integrity or overdue")
	case len(conds) > 1:
		return nil, p.errf(conds[1], "rule: %s and %s: give one condition per rule", conds[0].Value, conds[1].Value)
	case actionsNode == nil:
		return nil, p.errf(n, "rule: the field actions is required")
	}
	if f.Mode == ModeEach {
		switch {
		case f.When.Src == "":
			return nil, p.errf(conds[0], "mode each: only with a when condition")
		case forNode != nil:
			return nil, p.errf(forNode, "for: not with mode each (there is no alarm to hold)")
		case clearNode != nil:
			return nil, p.errf(clearNode, "clear: not with mode each (there is no alarm to clear)")
		}
	}
	if clearNode != nil && f.When.Src == "" {
		return nil, p.errf(clearNode, "clear: only with a when condition (silent, integrity and overdue clear by themselves)")
	}
	if forNode != nil && f.When.Src == "" && f.Overdue == nil {
		return nil, p.errf(forNode, "for: only with a when or overdue condition")
	}
	if f.RateLimit.N == 0 {
		f.RateLimit = DefaultRate
	}
	return f, nil
}

func (p *parser) overdue(n *yaml.Node) (*Overdue, error) {
	o := &Overdue{}
	var limit, date, calib *yaml.Node
	err := p.mapping(n, "overdue", func(key string, k, v *yaml.Node) error {
		var err error
		switch key {
		case "channel":
			if o.Channel, err = p.str(v, "overdue.channel"); err == nil && ident.ValidateElement(o.Channel) != nil {
				err = p.errf(v, "overdue.channel %q: a channel name", o.Channel)
			}
		case "limit":
			limit = v
			if v.Kind != yaml.ScalarNode || (v.Tag != "!!int" && v.Tag != "!!float") {
				return p.errf(v, "overdue.limit: want a number")
			}
			o.Limit, err = strconv.ParseFloat(v.Value, 64)
			if err != nil {
				return p.errf(v, "overdue.limit: want a number")
			}
		case "date":
			date = v
			if v.Kind != yaml.ScalarNode || v.Tag != "!!bool" {
				return p.errf(v, "overdue.date: want true or false")
			}
			o.Date = v.Value == "true"
		case "calibration":
			calib = v
			if v.Kind != yaml.ScalarNode || v.Tag != "!!bool" {
				return p.errf(v, "overdue.calibration: want true or false")
			}
			o.Calibration = v.Value == "true"
		default:
			return unknown(p, k, "overdue", "channel", "limit", "date", "calibration")
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	switch {
	case calib != nil && !o.Calibration:
		return nil, p.errf(calib, "overdue: calibration: false is the default; give channel with limit or date: true instead")
	case o.Calibration && (o.Channel != "" || limit != nil || date != nil):
		return nil, p.errf(n, "overdue: calibration: true reads the DCC of the device's instrument; it takes no channel, limit or date")
	case o.Calibration:
		return o, nil
	case o.Channel == "":
		return nil, p.errf(n, "overdue: the field channel is required (or calibration: true)")
	case (limit == nil) == !o.Date:
		return nil, p.errf(n, "overdue: give either limit (a counter channel) or date: true (a channel holding a due time in Unix seconds)")
	case date != nil && !o.Date && limit == nil:
		return nil, p.errf(date, "overdue: date: false needs a limit")
	}
	return o, nil
}

// rate reads "N/unit" with unit s, m, h or d.
func (p *parser) rate(n *yaml.Node) (Rate, error) {
	s, err := p.str(n, "rate_limit")
	if err != nil {
		return Rate{}, err
	}
	num, unit, ok := strings.Cut(s, "/")
	count, cerr := strconv.Atoi(num)
	per := map[string]time.Duration{"s": time.Second, "m": time.Minute, "h": time.Hour, "d": 24 * time.Hour}[unit]
	if !ok || cerr != nil || count < 1 || count > 100000 || per == 0 {
		return Rate{}, p.errf(n, "rate_limit %q: use N/s, N/m, N/h or N/d, e.g. 10/h", s)
	}
	return Rate{N: count, Per: per}, nil
}

func (p *parser) actions(n *yaml.Node) ([]Action, error) {
	if err := p.plain(n); err != nil {
		return nil, err
	}
	if n.Kind != yaml.SequenceNode || len(n.Content) == 0 {
		return nil, p.errf(n, "actions: want a list of at least one action (email, task, webhook, mqtt)")
	}
	if len(n.Content) > 16 {
		return nil, p.errf(n.Content[16], "actions: at most 16")
	}
	var out []Action
	for _, item := range n.Content {
		if err := p.plain(item); err != nil {
			return nil, err
		}
		if item.Kind != yaml.MappingNode || len(item.Content) != 2 {
			return nil, p.errf(item, "action: want one of email: [...], task: {...}, webhook: {...}, mqtt: {}")
		}
		a, err := p.action(item.Content[0], item.Content[1])
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

func (p *parser) action(k, v *yaml.Node) (Action, error) {
	if err := p.plain(v); err != nil {
		return Action{}, err
	}
	a := Action{Kind: k.Value}
	var err error
	switch k.Value {
	case ActionEmail:
		if v.Kind == yaml.MappingNode {
			err = p.mapping(v, "email", func(key string, k, v *yaml.Node) error {
				var err error
				switch key {
				case "to":
					a.To, err = p.strings(v, "email.to")
				case "subject":
					a.Subject, err = p.template(v, "email.subject")
				default:
					return unknown(p, k, "email", "to", "subject")
				}
				return err
			})
		} else {
			a.To, err = p.strings(v, "email")
		}
		if err != nil {
			return a, err
		}
		if len(a.To) == 0 || len(a.To) > 50 {
			return a, p.errf(v, "email: 1 to 50 recipients")
		}
		for _, to := range a.To {
			if addr, perr := mail.ParseAddress(to); perr != nil || addr.Name != "" || strings.ContainsAny(to, "\r\n") {
				return a, p.errf(v, "email: %q is not a mail address such as service@example.com", to)
			}
		}
	case ActionTask:
		err = p.mapping(v, "task", func(key string, k, v *yaml.Node) error {
			var err error
			switch key {
			case "title":
				a.Title, err = p.template(v, "task.title")
			case "assignee":
				a.Assignee, err = p.str(v, "task.assignee")
			case "due":
				a.Due, err = p.duration(v, "task.due")
			default:
				return unknown(p, k, "task", "title", "assignee", "due")
			}
			return err
		})
		if err == nil && a.Title == nil {
			err = p.errf(v, "task: the field title is required")
		}
	case ActionWebhook:
		err = p.mapping(v, "webhook", func(key string, k, v *yaml.Node) error {
			var err error
			switch key {
			case "url":
				if a.URL, err = p.str(v, "webhook.url"); err == nil {
					if u, perr := url.Parse(a.URL); perr != nil || u.Scheme != "https" || u.Host == "" || u.User != nil {
						err = p.errf(v, "webhook.url %q: an https:// URL without credentials", a.URL)
					}
				}
			case "secret":
				if a.Secret, err = p.str(v, "webhook.secret"); err == nil && ident.ValidateElement(a.Secret) != nil {
					err = p.errf(v, "webhook.secret %q: the name of a webhook endpoint ('fieldtrust rule endpoint add')", a.Secret)
				}
			default:
				return unknown(p, k, "webhook", "url", "secret")
			}
			return err
		})
		if err == nil && (a.URL == "" || a.Secret == "") {
			err = p.errf(v, "webhook: url and secret are required (calls are always signed)")
		}
	case ActionMQTT:
		err = p.mapping(v, "mqtt", func(key string, k, v *yaml.Node) error {
			return unknown(p, k, "mqtt", "(none: the event goes to the device's events channel)")
		})
	default:
		return a, p.errf(k, "action %q: use email, task, webhook or mqtt", k.Value)
	}
	return a, err
}

// TemplateData is what email subjects and task titles may name:
// {{.Device}}, {{.Rule}}, {{.Severity}}, {{.Type}}, {{.At}}.
type TemplateData struct {
	Device, Gateway, Rule, Severity, Type, Event string
	At                                           time.Time
}

func (p *parser) template(n *yaml.Node, what string) (*template.Template, error) {
	s, err := p.str(n, what)
	if err != nil {
		return nil, err
	}
	const fields = "use text and {{.Device}}, {{.Gateway}}, {{.Rule}}, {{.Severity}}, {{.Type}}, {{.Event}}, {{.At}}"
	t, err := template.New(what).Option("missingkey=error").Parse(s)
	if err != nil {
		return nil, p.errf(n, "%s: %v", what, strings.TrimPrefix(err.Error(), "template: "))
	}
	// Only text and fields: no functions, pipelines or loops, so a rule
	// cannot make the platform build a gigabyte title.
	for _, node := range t.Tree.Root.Nodes {
		switch x := node.(type) {
		case *parse.TextNode:
			continue
		case *parse.ActionNode:
			if len(x.Pipe.Cmds) == 1 && len(x.Pipe.Decl) == 0 && len(x.Pipe.Cmds[0].Args) == 1 {
				if f, ok := x.Pipe.Cmds[0].Args[0].(*parse.FieldNode); ok && len(f.Ident) == 1 {
					continue
				}
			}
		}
		return nil, p.errf(n, "%s: %q: %s", what, node.String(), fields)
	}
	// Try it, so a field that does not exist fails now, not at 3 a.m.
	var b strings.Builder
	if err := t.Execute(&b, TemplateData{}); err != nil {
		return nil, p.errf(n, "%s: %s", what, fields)
	}
	return t, nil
}
