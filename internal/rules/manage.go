package rules

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/ident"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// Author is who adds a rule or a webhook endpoint: the vendor (the
// platform's operator or an admin service), or a customer identity.
type Author struct {
	Vendor bool
	Path   string // the customer's identity path; for the vendor, a name for the record
}

// String names the author in records.
func (a Author) String() string {
	if a.Vendor && a.Path == "" {
		return "vendor"
	}
	return a.Path
}

// ErrForbidden is returned (wrapped) when an author may not act on a
// scope.
var ErrForbidden = errors.New("forbidden")

// MayManage is the one rule of who may write rules and endpoints for a
// scope: the vendor anything (including "*", the whole fleet), a customer
// only its own subtree.
func (a Author) MayManage(scope string) bool {
	if a.Vendor {
		return true
	}
	return a.Path != "" && scope != store.VendorScope && store.InScope(a.Path, scope)
}

// MayRead reports whether a may see records about gateway path gw (an
// alarm, a task, a message): the vendor all, a customer its subtree.
func (a Author) MayRead(gw string) bool {
	return a.Vendor || (a.Path != "" && store.InScope(a.Path, gw))
}

// Scope is the store scope of what a may read ("" for all).
func (a Author) Scope() string {
	if a.Vendor {
		return ""
	}
	return a.Path
}

// RuleStore is what adding rules needs of the store.
type RuleStore interface {
	PutRule(ctx context.Context, r store.Rule) (store.Rule, error)
	WebhookEndpoint(ctx context.Context, name string) (store.WebhookEndpoint, error)
}

// Check loads a rule file and checks that author may add it: its scope is
// the author's to manage, and every webhook names an endpoint the author
// manages, whose scope covers the rule's, with the URL the rule names.
// Errors in the file are *Error values; a refusal wraps ErrForbidden.
func Check(ctx context.Context, st RuleStore, a Author, name string, data []byte) (*Rule, error) {
	r, err := Load(name, data)
	if err != nil {
		return nil, err
	}
	if !a.MayManage(r.Scope) {
		return nil, fmt.Errorf("%w: rule %s: %s may write rules only for its own scope, not for %s", ErrForbidden, r.Name, a, r.Scope)
	}
	for _, act := range r.Actions {
		if act.Kind != ActionWebhook {
			continue
		}
		ep, err := st.WebhookEndpoint(ctx, act.Secret)
		if errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("rule %s: webhook endpoint %q does not exist; add it first with 'fieldtrust rule endpoint add %s --url %s --scope %s'", r.Name, act.Secret, act.Secret, act.URL, r.Scope)
		}
		if err != nil {
			return nil, err
		}
		covers := ep.Scope == store.VendorScope || (r.Scope != store.VendorScope && store.InScope(ep.Scope, r.Scope))
		if !a.MayManage(ep.Scope) || !covers {
			return nil, fmt.Errorf("%w: rule %s: webhook endpoint %s (scope %s) may not be used by a rule of scope %s", ErrForbidden, r.Name, ep.Name, ep.Scope, r.Scope)
		}
		if ep.URL != act.URL {
			return nil, fmt.Errorf("rule %s: webhook endpoint %s has the URL %s, the rule names %s", r.Name, ep.Name, ep.URL, act.URL)
		}
	}
	return r, nil
}

// Add checks a rule file (Check) and stores it; adding a rule of the
// same scope and name again stores its next revision.
func Add(ctx context.Context, st RuleStore, a Author, name string, data []byte, now time.Time) (store.Rule, error) {
	r, err := Check(ctx, st, a, name, data)
	if err != nil {
		return store.Rule{}, err
	}
	return st.PutRule(ctx, store.Rule{Name: r.Name, Scope: r.Scope, Author: a.String(), Source: data, UpdatedAt: now})
}

// EndpointStore is what adding webhook endpoints needs of the store.
type EndpointStore interface {
	PutWebhookEndpoint(ctx context.Context, e store.WebhookEndpoint) error
}

// Sealer seals secrets at rest (secretbox.Box).
type Sealer interface {
	Seal(name string, secret []byte) ([]byte, error)
}

// AddEndpoint stores a webhook endpoint with its secret sealed. The name
// is global; an endpoint of another scope with the name is refused.
func AddEndpoint(ctx context.Context, st EndpointStore, box Sealer, a Author, name, scope, rawURL string, secret []byte, now time.Time) error {
	if err := ident.ValidateElement(name); err != nil {
		return fmt.Errorf("endpoint name %q: %w", name, err)
	}
	if scope != store.VendorScope {
		if _, err := ident.SplitPath(scope); err != nil {
			return fmt.Errorf("endpoint scope %q: an identity path or \"*\": %w", scope, err)
		}
	}
	if !a.MayManage(scope) {
		return fmt.Errorf("%w: %s may add endpoints only for its own scope, not for %s", ErrForbidden, a, scope)
	}
	if u, err := url.Parse(rawURL); err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil {
		return fmt.Errorf("endpoint URL %q: an https:// URL without credentials", rawURL)
	}
	if len(secret) < 24 {
		return errors.New("a webhook secret has at least 24 random bytes")
	}
	sealed, err := box.Seal(name, secret)
	if err != nil {
		return err
	}
	return st.PutWebhookEndpoint(ctx, store.WebhookEndpoint{Name: name, Scope: scope, URL: rawURL, SealedSecret: sealed, CreatedAt: now})
}
