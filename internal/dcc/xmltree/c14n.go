package xmltree

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Canonicalization algorithm identifiers (XMLDSig).
const (
	C14N10             = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
	C14N10WithComments = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315#WithComments"
	C14N11             = "http://www.w3.org/2006/12/xml-c14n11"
	C14N11WithComments = "http://www.w3.org/2006/12/xml-c14n11#WithComments"
	ExcC14N            = "http://www.w3.org/2001/10/xml-exc-c14n#"
	ExcC14NWithComment = "http://www.w3.org/2001/10/xml-exc-c14n#WithComments"
)

// ErrUnsupported is wrapped by canonicalization inputs this package does not
// handle (an unknown algorithm, xml:base fix-up).
var ErrUnsupported = errors.New("unsupported canonicalization")

// Method is a canonicalization algorithm with its parameters.
type Method struct {
	Exclusive    bool
	Version11    bool // C14N 1.1 (inclusive only)
	WithComments bool
	// InclusivePrefixes is exclusive C14N's InclusiveNamespaces
	// PrefixList; "#default" names the default namespace.
	InclusivePrefixes []string
}

// MethodFor returns the method an algorithm URI names.
func MethodFor(uri string) (Method, error) {
	switch uri {
	case C14N10:
		return Method{}, nil
	case C14N10WithComments:
		return Method{WithComments: true}, nil
	case C14N11:
		return Method{Version11: true}, nil
	case C14N11WithComments:
		return Method{Version11: true, WithComments: true}, nil
	case ExcC14N:
		return Method{Exclusive: true}, nil
	case ExcC14NWithComment:
		return Method{Exclusive: true, WithComments: true}, nil
	}
	return Method{}, fmt.Errorf("%w: algorithm %q", ErrUnsupported, uri)
}

// Canonical returns the canonical form of the subtree at apex, or of the
// whole document when apex is nil, leaving out the subtree at exclude (an
// enveloped signature) if it is non-nil. Comments are left out unless the
// method keeps them.
func (d *Document) Canonical(m Method, apex, exclude *Node) ([]byte, error) {
	c := &canon{m: m, exclude: exclude}
	if apex == nil {
		for _, n := range d.Prolog {
			if c.misc(n) {
				c.buf.WriteByte('\n')
			}
		}
		if err := c.element(d.Root, true); err != nil {
			return nil, err
		}
		for _, n := range d.Epilog {
			if n.Kind == Comment && !m.WithComments {
				continue
			}
			c.buf.WriteByte('\n')
			c.misc(n)
		}
		return c.buf.Bytes(), nil
	}
	if apex.Kind != Element {
		return nil, errors.New("canonicalize: apex is not an element")
	}
	if err := c.element(apex, true); err != nil {
		return nil, err
	}
	return c.buf.Bytes(), nil
}

type canon struct {
	m        Method
	exclude  *Node
	buf      bytes.Buffer
	rendered []NSDecl // namespace declarations rendered by output ancestors, innermost last
}

func (c *canon) renderedURI(prefix string) (string, bool) {
	for i := len(c.rendered) - 1; i >= 0; i-- {
		if c.rendered[i].Prefix == prefix {
			return c.rendered[i].URI, true
		}
	}
	return "", false
}

// inScope is the URI prefix is bound to at n ("" and false when unbound).
func inScope(n *Node, prefix string) (string, bool) {
	for ; n != nil; n = n.Parent {
		for _, d := range n.NS {
			if d.Prefix == prefix {
				return d.URI, true
			}
		}
	}
	if prefix == "xml" {
		return NSXML, true
	}
	return "", false
}

// misc writes a comment or PI; it reports whether it wrote anything.
func (c *canon) misc(n *Node) bool {
	switch n.Kind {
	case Comment:
		if !c.m.WithComments {
			return false
		}
		c.buf.WriteString("<!--")
		c.buf.WriteString(n.Data)
		c.buf.WriteString("-->")
	case ProcInst:
		c.buf.WriteString("<?")
		c.buf.WriteString(n.Local)
		if data := strings.TrimLeft(n.Data, " \t\r\n"); data != "" {
			c.buf.WriteByte(' ')
			c.buf.WriteString(data)
		}
		c.buf.WriteString("?>")
	default:
		return false
	}
	return true
}

func (c *canon) element(n *Node, apex bool) error {
	mark := len(c.rendered)
	var ns []NSDecl
	render := func(prefix, uri string) {
		if prefix == "xml" {
			return
		}
		got, ok := c.renderedURI(prefix)
		if prefix == "" && !ok {
			got, ok = "", true // no default namespace rendered is the empty one
		}
		if ok && got == uri {
			return
		}
		for _, d := range ns {
			if d.Prefix == prefix {
				return
			}
		}
		ns = append(ns, NSDecl{prefix, uri})
	}
	switch {
	case c.m.Exclusive:
		used := []string{n.Prefix}
		for _, a := range n.Attrs {
			if a.Prefix != "" {
				used = append(used, a.Prefix)
			}
		}
		for _, p := range used {
			uri, _ := inScope(n, p)
			render(p, uri)
		}
		for _, p := range c.m.InclusivePrefixes {
			if p == "#default" {
				p = ""
			}
			if uri, ok := inScope(n, p); ok && (p != "" || uri != "") {
				render(p, uri)
			}
		}
	case apex:
		seen := map[string]bool{}
		for a := n; a != nil; a = a.Parent {
			for _, d := range a.NS {
				if !seen[d.Prefix] {
					seen[d.Prefix] = true
					render(d.Prefix, d.URI)
				}
			}
		}
	default:
		for _, d := range n.NS {
			render(d.Prefix, d.URI)
		}
	}
	sort.Slice(ns, func(i, j int) bool { return ns[i].Prefix < ns[j].Prefix })
	c.rendered = append(c.rendered, ns...)

	attrs := n.Attrs
	if apex && !c.m.Exclusive && n.Parent != nil {
		var err error
		if attrs, err = c.inheritXMLAttrs(n); err != nil {
			return err
		}
	}
	sorted := make([]Attr, len(attrs))
	copy(sorted, attrs)
	sort.Slice(sorted, func(i, j int) bool {
		if sorted[i].Space != sorted[j].Space {
			return sorted[i].Space < sorted[j].Space
		}
		return sorted[i].Local < sorted[j].Local
	})

	c.buf.WriteByte('<')
	c.writeName(n.Prefix, n.Local)
	for _, d := range ns {
		if d.Prefix == "" {
			c.buf.WriteString(` xmlns="`)
		} else {
			c.buf.WriteString(" xmlns:")
			c.buf.WriteString(d.Prefix)
			c.buf.WriteString(`="`)
		}
		escapeAttr(&c.buf, d.URI)
		c.buf.WriteByte('"')
	}
	for _, a := range sorted {
		c.buf.WriteByte(' ')
		c.writeName(a.Prefix, a.Local)
		c.buf.WriteString(`="`)
		escapeAttr(&c.buf, a.Value)
		c.buf.WriteByte('"')
	}
	c.buf.WriteByte('>')
	for _, ch := range n.Children {
		switch ch.Kind {
		case Element:
			if ch == c.exclude {
				continue
			}
			if err := c.element(ch, false); err != nil {
				return err
			}
		case Text:
			escapeText(&c.buf, ch.Data)
		default:
			c.misc(ch)
		}
	}
	c.buf.WriteString("</")
	c.writeName(n.Prefix, n.Local)
	c.buf.WriteByte('>')
	c.rendered = c.rendered[:mark]
	return nil
}

// inheritXMLAttrs adds to the apex of a document subset the xml:*
// attributes of its omitted ancestors (C14N 1.0 §2.4: all of them; C14N
// 1.1 §2.4: xml:lang and xml:space; xml:base would need fixing up, which
// is not supported).
func (c *canon) inheritXMLAttrs(n *Node) ([]Attr, error) {
	attrs := append([]Attr(nil), n.Attrs...)
	have := map[string]bool{}
	for _, a := range attrs {
		if a.Space == NSXML {
			have[a.Local] = true
		}
	}
	for p := n.Parent; p != nil; p = p.Parent {
		for _, a := range p.Attrs {
			if a.Space != NSXML || have[a.Local] {
				continue
			}
			if c.m.Version11 {
				switch a.Local {
				case "id":
					continue
				case "base":
					return nil, fmt.Errorf("%w: xml:base on an ancestor of a C14N 1.1 subset", ErrUnsupported)
				}
			}
			have[a.Local] = true
			attrs = append(attrs, a)
		}
	}
	return attrs, nil
}

func (c *canon) writeName(prefix, local string) {
	if prefix != "" {
		c.buf.WriteString(prefix)
		c.buf.WriteByte(':')
	}
	c.buf.WriteString(local)
}

func escapeText(b *bytes.Buffer, s string) {
	for i := 0; i < len(s); i++ {
		switch ch := s[i]; ch {
		case '&':
			b.WriteString("&amp;")
		case '<':
			b.WriteString("&lt;")
		case '>':
			b.WriteString("&gt;")
		case '\r':
			b.WriteString("&#xD;")
		default:
			b.WriteByte(ch)
		}
	}
}

func escapeAttr(b *bytes.Buffer, s string) {
	for i := 0; i < len(s); i++ {
		switch ch := s[i]; ch {
		case '&':
			b.WriteString("&amp;")
		case '<':
			b.WriteString("&lt;")
		case '"':
			b.WriteString("&quot;")
		case '\t':
			b.WriteString("&#x9;")
		case '\n':
			b.WriteString("&#xA;")
		case '\r':
			b.WriteString("&#xD;")
		default:
			b.WriteByte(ch)
		}
	}
}
