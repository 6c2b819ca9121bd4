// Package tacs is fieldtrust's topic access control: a pure function from
// (subject, action, topic or filter) to a decision.
//
// The rules, in the order Authorize applies them:
//
//  1. The subject, the topic or filter, and a $share group must be well
//     formed (see Subject.Validate, MaxTopicLen, MaxLevels); anything odd is
//     refused with a reason saying what.
//  2. A service is refused what a deny Grant of its role covers, then
//     allowed what another Grant of its role covers.
//  3. Every valid subject may subscribe to (read) pki/crl/#, so revocation
//     lists reach everyone; nobody but a grant writes there.
//  4. An account identity may read and write its own subtree PATH/#, which
//     includes PATH itself. Because paths nest (master/account/device), a
//     master account sees all its accounts and an account all its devices.
//  5. A customer site (Subject.Site, an account's forwarding broker) may do
//     only what the RoleSite grants allow AND inside its own subtree: a
//     grant decides the topic kinds (gateway→platform channels to publish,
//     platform→gateway channels to read), the subtree the tenant. Its
//     deny grants apply first, as for a service.
//  6. Everything else is refused.
//
// A subscription filter is allowed only if EVERY topic it can match is
// allowed: the filter must be covered by a single allowed filter (own
// subtree, the CRL subtree or one grant). Covering by a union of several
// allowed filters is not attempted; that can refuse an exotic filter that
// would be safe, never the reverse.
//
// tacs holds no state and does no I/O, so it is safe for concurrent use and
// cheap enough to call on every publish and delivery.
package tacs

import (
	"fmt"

	"github.com/fieldtrust/fieldtrust/internal/ident"
)

// Action is what the subject wants to do.
type Action uint8

const (
	// Subscribe reads: the argument is a filter, possibly with wildcards
	// and a $share/group/ prefix. A topic name is a valid filter, so a
	// delivery check ("may this subject read this topic?") is a Subscribe.
	Subscribe Action = iota + 1
	// Publish writes: the argument is a topic name without wildcards.
	Publish
)

func (a Action) String() string {
	switch a {
	case Subscribe:
		return "subscribe"
	case Publish:
		return "publish"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// Reason explains a Decision. Its values are a small fixed set so they can
// be used as a metric label.
type Reason string

// Reasons for allowing.
const (
	ReasonOwnSubtree Reason = "own_subtree"
	ReasonRoleGrant  Reason = "role_grant"
	ReasonCRLRead    Reason = "crl_read"
)

// Reasons for refusing.
const (
	ReasonInvalidSubject  Reason = "invalid_subject"
	ReasonUnknownRole     Reason = "unknown_role"
	ReasonInvalidAction   Reason = "invalid_action"
	ReasonEmptyLevel      Reason = "empty_level"
	ReasonTooLong         Reason = "too_long"
	ReasonTooDeep         Reason = "too_deep"
	ReasonBadEncoding     Reason = "bad_encoding"
	ReasonBadWildcard     Reason = "bad_wildcard"
	ReasonWildcardInTopic Reason = "wildcard_in_topic"
	ReasonInvalidShare    Reason = "invalid_share"
	ReasonSystemTopic     Reason = "system_topic"
	ReasonForeignTopic    Reason = "foreign_topic"
	ReasonRoleDenied      Reason = "role_denied"
	// ReasonSiteChannel refuses a site a topic of its own subtree that no
	// RoleSite grant covers (a platform→gateway channel to publish, a
	// gateway→platform channel to read, a wildcard over both).
	ReasonSiteChannel Reason = "site_channel"
)

// Decision is the outcome of Authorize.
type Decision struct {
	Allowed bool
	Reason  Reason
}

func allow(r Reason) Decision { return Decision{Allowed: true, Reason: r} }
func deny(r Reason) Decision  { return Decision{Reason: r} }

var crlSubtree = []string{"pki", "crl", "#"}

// Authorize decides whether s may perform a on topicOrFilter under grants g.
// It never panics, whatever the input.
func Authorize(g Grants, s Subject, a Action, topicOrFilter string) Decision {
	if s.Validate() != nil {
		return deny(ReasonInvalidSubject)
	}
	var levels []string
	var r Reason
	switch a {
	case Subscribe:
		filter := topicOrFilter
		if group, inner, ok := splitShare(topicOrFilter); ok {
			if ident.ValidateElement(group) != nil || inner == "" {
				return deny(ReasonInvalidShare)
			}
			filter = inner
		}
		levels, r = parseFilter(filter)
	case Publish:
		levels, r = parseTopic(topicOrFilter)
	default:
		return deny(ReasonInvalidAction)
	}
	if r != "" {
		return deny(r)
	}

	if s.IsService() || s.Site {
		grants, ok := g[s.role()]
		if !ok {
			return deny(ReasonUnknownRole)
		}
		// Deny grants first: what one covers is refused whatever else the
		// role or the CRL rule would allow.
		for _, gr := range grants {
			if !gr.Deny || !gr.permits(a) {
				continue
			}
			if gl, r := parseFilter(gr.Filter); r == "" && covers(gl, levels) {
				return deny(ReasonRoleDenied)
			}
		}
		// A site's grants count only inside its own subtree (rule 5).
		inside := !s.Site || covers(append(splitPath(s.Path), "#"), levels)
		for _, gr := range grants {
			if gr.Deny || !gr.permits(a) || !inside {
				continue
			}
			gl, r := parseFilter(gr.Filter)
			if r != "" {
				continue // Grants.Validate reports these; an invalid grant grants nothing.
			}
			if covers(gl, levels) {
				return allow(ReasonRoleGrant)
			}
		}
		if s.Site && inside {
			return deny(ReasonSiteChannel)
		}
	}
	if a == Subscribe && covers(crlSubtree, levels) {
		return allow(ReasonCRLRead)
	}
	if !s.IsService() && !s.Site {
		own := append(splitPath(s.Path), "#")
		if covers(own, levels) {
			return allow(ReasonOwnSubtree)
		}
	}
	if isDollar(levels[0]) {
		return deny(ReasonSystemTopic)
	}
	return deny(ReasonForeignTopic)
}

// splitPath splits a validated identity path into a fresh slice with room
// for one more level.
func splitPath(p string) []string {
	out := make([]string, 0, MaxPathElements+1)
	start := 0
	for i := 0; i < len(p); i++ {
		if p[i] == '/' {
			out = append(out, p[start:i])
			start = i + 1
		}
	}
	return append(out, p[start:])
}

// permits reports whether the grant names action a.
func (g Grant) permits(a Action) bool {
	return (a == Subscribe && g.Read) || (a == Publish && g.Write)
}
