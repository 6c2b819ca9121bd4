package console

import (
	"net/http"
	"slices"
	"sync"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// Page is one view of the console: a GET route, its entry in the
// navigation, who may see it, and the POST actions it offers. To add a
// page (rules and alarms, agents), build a Page whose Handle renders with
// Console.Render and a template added with Console.AddTemplate, and pass
// it to Registry.Add before Register is called:
//
//	c.AddTemplate("alarms", `{{define "alarms"}}<h1>Alarms</h1>...{{end}}`)
//	c.Pages().Add(console.Page{Path: "/alarms", Title: "Alarms", Nav: true, MinRole: store.RoleViewer, Order: 25,
//		Handle: func(w http.ResponseWriter, r *http.Request, v *console.Viewer) {
//			c.Render(w, r, v, "alarms", "Alarms", data) // read only what v.Scope / v.CanRead allow
//		},
//		Actions: []console.Action{{Path: "/alarms/ack", MinRole: store.RoleOperator, Handle: ack}}})
//
// Login, the layout, the CSRF check of every action, the security headers
// and the role check are the console's; the page only reads within the
// viewer's scope.
type Page struct {
	Path    string // the GET pattern, e.g. "/fleet" or "/devices/{path...}"
	Title   string // the navigation label
	Nav     bool   // listed in the navigation bar
	Order   int    // position in the navigation (ascending)
	MinRole string // store.RoleViewer, RoleOperator or RoleAdmin
	// VendorOnly pages are for users of the vendor's admin scope (claims,
	// manufacturers, rejects: they concern every tenant).
	VendorOnly bool
	// NavPath is the link of the navigation entry, if Path is a pattern.
	NavPath string
	Handle  func(w http.ResponseWriter, r *http.Request, v *Viewer)
	Actions []Action
}

// Action is a state-changing request a page offers (POST, CSRF-checked).
type Action struct {
	Path    string
	MinRole string
	// VendorOnly actions are for users of the vendor's admin scope, on a
	// page others see too.
	VendorOnly bool
	// MaxBody bounds the request body (a file upload); 0 means the
	// console's bound for forms (64 KiB).
	MaxBody int64
	Handle  func(w http.ResponseWriter, r *http.Request, v *Viewer)
}

// Registry holds the console's pages.
type Registry struct {
	mu    sync.Mutex
	pages []Page
}

// Add registers a page.
func (g *Registry) Add(p Page) {
	if p.MinRole == "" {
		p.MinRole = store.RoleViewer
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.pages = append(g.pages, p)
	slices.SortStableFunc(g.pages, func(a, b Page) int { return a.Order - b.Order })
}

func (g *Registry) all() []Page {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.pages)
}

// navItem is one link of the navigation bar.
type navItem struct {
	Title, Href string
	Active      bool
}

func (c *Console) nav(r *http.Request, v *Viewer) []navItem {
	var out []navItem
	for _, p := range c.pages.all() {
		if !p.Nav || v == nil || !c.allowed(p, v) {
			continue
		}
		href := p.NavPath
		if href == "" {
			href = p.Path
		}
		out = append(out, navItem{Title: p.Title, Href: href, Active: r.URL.Path == href})
	}
	return out
}
