package tacs

import (
	"fmt"
	"strings"
)

// CRLFilter is the subtree every valid subject may read (rule 3).
const CRLFilter = "pki/crl/#"

// Rights lists what s may do under g as grants, deny grants first: rule 2
// (the role's grants) for a service, rule 4 (the own subtree PATH/#) for
// an account, and rule 3 (read CRLFilter) for both. Authorize allows a
// well-formed request exactly when no deny grant of the list covers it and
// one other grant does (TestRightsAgreeWithAuthorize, FuzzRights): the
// list is the same rules, stated as data, for engines whose authorization
// hook takes permission lists instead of calling Authorize per message
// (the clustered broker tier, internal/cluster). An invalid subject or an
// unknown role is an error, as Authorize refuses everything for them.
func Rights(g Grants, s Subject) ([]Grant, error) {
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("rights of %s: %w", s, err)
	}
	var out []Grant
	if s.IsService() || s.Site {
		grants, ok := g[s.role()]
		if !ok {
			return nil, fmt.Errorf("rights of %s: unknown role %q", s, s.Role)
		}
		for _, gr := range grants {
			if gr.Deny {
				out = append(out, gr)
			}
		}
		for _, gr := range grants {
			if gr.Deny {
				continue
			}
			gl, r := parseFilter(gr.Filter)
			if r != "" {
				continue
			}
			if !s.Site {
				out = append(out, gr)
			} else if in, ok := intersectSubtree(splitPath(s.Path), gl); ok {
				// Rule 5: the grant, narrowed to the site's subtree.
				gr.Filter = strings.Join(in, "/")
				out = append(out, gr)
			}
		}
	} else {
		out = append(out, Grant{Filter: s.Path + "/#", Read: true, Write: true})
	}
	return append(out, Grant{Filter: CRLFilter, Read: true}), nil
}

// intersectSubtree returns the filter matching exactly the topics that both
// the subtree PATH/# (path: literal levels) and filter f match, and false
// if there are none.
func intersectSubtree(path, f []string) ([]string, bool) {
	for i, p := range path {
		if i == len(f) {
			return nil, false // f is shallower than the subtree's root
		}
		switch f[i] {
		case "#":
			return append(append([]string{}, path...), "#"), true
		case "+", p:
		default:
			return nil, false
		}
	}
	return append(append([]string{}, path...), f[len(path):]...), true
}
