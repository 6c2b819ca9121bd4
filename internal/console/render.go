package console

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"io/fs"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// parseTemplates parses the layout and every page template. html/template
// escapes by context, so data can never become markup or script.
func parseTemplates(a *assets) (*template.Template, error) {
	t := template.New("console").Funcs(template.FuncMap{
		"asset":   a.url,
		"time":    func(t time.Time) string { return fmtTime(t) },
		"ago":     ago,
		"num":     fmtNum,
		"bytes":   fmtBytes,
		"short":   func(s string) string { return shorten(s, 12) },
		"query":   url.QueryEscape,
		"pathesc": url.PathEscape,
		"add":     func(a, b int) int { return a + b },
		"hex":     hexHash,
	})
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	for _, n := range names {
		body, err := templateFS.ReadFile(n)
		if err != nil {
			return nil, err
		}
		if _, err := t.Parse(string(body)); err != nil {
			return nil, fmt.Errorf("console template %s: %w", n, err)
		}
	}
	return t, nil
}

// AddTemplate adds a page template ({{define "name"}}...{{end}}) that
// Render can use: the extension point for pages of other packages.
func (c *Console) AddTemplate(text string) error {
	_, err := c.tmpl.Parse(text)
	return err
}

// layoutData is what the layout template sees.
type layoutData struct {
	Title  string
	Page   string
	Viewer *Viewer
	Nav    []navItem
	Body   template.HTML // the page, rendered (and escaped) by its own template
}

// pageData is what a page template sees: the viewer (nil before login)
// and the page's data.
type pageData struct {
	V *Viewer
	D any
}

// Render renders the page template name inside the layout.
func (c *Console) Render(w http.ResponseWriter, r *http.Request, v *Viewer, name, title string, data any) {
	c.render(w, r, v, http.StatusOK, name, title, data)
}

func (c *Console) render(w http.ResponseWriter, r *http.Request, v *Viewer, status int, name, title string, data any) {
	var body, buf bytes.Buffer
	err := c.tmpl.ExecuteTemplate(&body, name, pageData{V: v, D: data})
	if err == nil {
		// body is html/template's output: escaped for its context already.
		err = c.tmpl.ExecuteTemplate(&buf, "layout", layoutData{Title: title, Page: name, Viewer: v, Nav: c.nav(r, v), Body: template.HTML(body.String())})
	}
	if err != nil {
		c.log.Error("console page failed to render", "page", name, "err", err)
		http.Error(w, "internal error; the platform log has the details", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := time.Since(t)
	switch {
	case d < 0:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

func fmtNum(v float64) string {
	if v == math.Trunc(v) && math.Abs(v) < 1e15 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'g', 6, 64)
}

func fmtBytes(n int) string {
	switch {
	case n < 10<<10:
		return fmt.Sprintf("%d B", n)
	case n < 10<<20:
		return fmt.Sprintf("%.1f KiB", float64(n)/1024)
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func urlQueryEscape(s string) string { return url.QueryEscape(s) }
