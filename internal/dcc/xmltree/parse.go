// Package xmltree is the one XML parser of the DCC code: it reads a document
// from hostile input into a namespace-resolved tree that keeps what XML
// canonicalization (C14N 1.0, 1.1 and exclusive C14N) needs — prefixes,
// namespace declarations, comments, processing instructions, source lines —
// and canonicalizes it.
//
// It refuses what makes XML dangerous rather than trying to defuse it: any
// document type declaration (so no entity expansion — no "billion laughs" —
// and no external entities or DTDs: the parser never opens a file or a
// network connection), documents over a byte bound, nesting over a depth
// bound, too many nodes or attributes, encodings other than UTF-8, undeclared
// prefixes and duplicate attributes. Each refusal is an error wrapping
// ErrRefused or ErrMalformed with the line it happened on.
//
// Parsing builds on encoding/xml's tokenizer (RawToken, so prefixes
// survive). encoding/xml does not normalize attribute values as XML 1.0
// §3.3.3 requires (a literal tab or newline becomes a space, a character
// reference does not), which canonical forms depend on, so attribute values
// are decoded again here from the raw start tag.
package xmltree

import (
	"bytes"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// Namespace URIs the XML and XMLNS prefixes are bound to.
const (
	NSXML   = "http://www.w3.org/XML/1998/namespace"
	NSXMLNS = "http://www.w3.org/2000/xmlns/"
)

// Errors every parse failure wraps.
var (
	// ErrMalformed: not well-formed XML (or not namespace-well-formed).
	ErrMalformed = errors.New("malformed XML")
	// ErrRefused: well-formed perhaps, but outside what we accept: a
	// DTD, an entity, a bound exceeded, an encoding other than UTF-8.
	ErrRefused = errors.New("refused XML")
)

// Limits bound what a document may cost to parse.
type Limits struct {
	MaxBytes      int // whole document
	MaxDepth      int // element nesting
	MaxNodes      int // elements, text, comments and PIs together
	MaxAttributes int // attributes and namespace declarations per element
}

// DefaultLimits fit DCCs of a few MiB with large tables (a 5 MB DCC has
// about 200,000 nodes) while bounding memory to a small multiple of the
// input. MaxBytes equals envelope.MaxEnvelopeBytes so that whatever fits in
// an envelope parses.
var DefaultLimits = Limits{MaxBytes: 16 << 20, MaxDepth: 128, MaxNodes: 2_000_000, MaxAttributes: 256}

// Kind is a node's type.
type Kind uint8

// Node kinds.
const (
	Element Kind = iota + 1
	Text
	Comment
	ProcInst
)

// Attr is an attribute (never a namespace declaration: those are NSDecl).
type Attr struct {
	Prefix, Local string
	Space         string // namespace URI; "" for unprefixed attributes
	Value         string // normalized as XML 1.0 §3.3.3 says for CDATA attributes
}

// NSDecl is a namespace declaration on an element: xmlns:Prefix="URI", or
// xmlns="URI" when Prefix is "".
type NSDecl struct{ Prefix, URI string }

// Node is an element, text, comment or processing instruction.
type Node struct {
	Kind          Kind
	Prefix, Local string // element name; PI target in Local
	Space         string // element namespace URI
	Attrs         []Attr
	NS            []NSDecl // declarations made on this element, in source order
	Children      []*Node
	Parent        *Node
	Data          string // text, comment or PI content
	Line          int    // source line of the node's start
	// Start and End are the byte offsets of an element in the source:
	// src[Start:End] is the element from '<' of its start tag to the '>'
	// of its end tag. EndTag is the offset of its end tag's '<' (equal
	// to End for an empty-element tag <x/>).
	Start, EndTag, End int
}

// Document is a parsed document.
type Document struct {
	Src  []byte // the bytes parsed, unchanged
	Root *Node
	// Prolog and Epilog are the comments and PIs before and after the
	// root element (the XML declaration is not a PI and is not kept).
	Prolog, Epilog []*Node
}

// Parse parses a document under the limits.
func Parse(src []byte, lim Limits) (*Document, error) {
	p, err := parse(src, lim)
	if err != nil {
		return nil, err
	}
	return p.doc, nil
}

func parse(src []byte, lim Limits) (*parser, error) {
	if len(src) > lim.MaxBytes {
		return nil, fmt.Errorf("%w: document of %d bytes exceeds the limit of %d", ErrRefused, len(src), lim.MaxBytes)
	}
	if !utf8.Valid(src) {
		return nil, fmt.Errorf("%w: not UTF-8", ErrRefused)
	}
	body := src
	bom := 0
	if bytes.HasPrefix(body, []byte("\xef\xbb\xbf")) {
		bom = 3
		body = body[3:]
	}
	p := &parser{src: src, lim: lim, bom: bom, doc: &Document{Src: src}}
	if err := p.run(body); err != nil {
		return nil, err
	}
	return p, nil
}

type parser struct {
	src   []byte
	bom   int
	lim   Limits
	doc   *Document
	nodes int

	// lineOff, line: the line of offset lineOff, where lineAt's last count
	// ended. Tokens come in document order, so each count continues from
	// there: counting from the start for every node made parsing
	// quadratic (a 5 MB DCC took minutes). scanned counts the bytes
	// counted, for the test that keeps it linear.
	lineOff, line int
	scanned       int
}

// scope is the namespace bindings in effect for an element.
type scope struct {
	parent *scope
	decls  []NSDecl
}

func (s *scope) lookup(prefix string) (string, bool) {
	for ; s != nil; s = s.parent {
		for i := len(s.decls) - 1; i >= 0; i-- {
			if s.decls[i].Prefix == prefix {
				return s.decls[i].URI, true
			}
		}
	}
	switch prefix {
	case "xml":
		return NSXML, true
	case "":
		return "", true
	}
	return "", false
}

func (p *parser) lineAt(off int) int {
	off = min(max(off, 0), len(p.src))
	if off < p.lineOff {
		p.lineOff, p.line = 0, 0
	}
	p.line += bytes.Count(p.src[p.lineOff:off], []byte("\n"))
	p.scanned += off - p.lineOff
	p.lineOff = off
	return 1 + p.line
}

func (p *parser) errf(base error, line int, format string, args ...any) error {
	return fmt.Errorf("%w: line %d: %s", base, line, fmt.Sprintf(format, args...))
}

func (p *parser) run(body []byte) error {
	d := xml.NewDecoder(bytes.NewReader(body))
	d.Strict = true
	d.Entity = nil // only the five predefined entities and character references
	// CharsetReader stays nil: a declared encoding other than UTF-8 fails.
	var stack []*Node
	var scopes []*scope
	var cur *scope
	seenRoot, seenDecl := false, false
	prev := int64(0)
	for {
		tok, err := d.RawToken()
		off := int(d.InputOffset()) + p.bom
		start := int(prev) + p.bom
		prev = d.InputOffset()
		if err == io.EOF {
			break
		}
		if err != nil {
			line, _ := d.InputPos()
			if msg := err.Error(); strings.Contains(msg, "encoding") || strings.Contains(msg, "unsupported version") {
				return p.errf(ErrRefused, line, "%v (only UTF-8 is accepted)", err)
			}
			return p.errf(ErrMalformed, line, "%v", err)
		}
		line := p.lineAt(start)
		switch t := tok.(type) {
		case xml.Directive:
			return p.errf(ErrRefused, line, "document type declarations are not accepted (no DTDs, no entities)")
		case xml.ProcInst:
			if t.Target == "xml" {
				if seenDecl || start != p.bom || len(stack) > 0 || seenRoot {
					return p.errf(ErrMalformed, line, "XML declaration not at the start of the document")
				}
				seenDecl = true
				if err := checkDecl(string(t.Inst)); err != nil {
					return p.errf(ErrRefused, line, "%v", err)
				}
				continue
			}
			if strings.EqualFold(t.Target, "xml") {
				return p.errf(ErrMalformed, line, "reserved processing instruction target %q", t.Target)
			}
			if err := p.add(&Node{Kind: ProcInst, Local: t.Target, Data: lineEnds(t.Inst), Line: line}, stack, seenRoot); err != nil {
				return err
			}
		case xml.Comment:
			if err := p.add(&Node{Kind: Comment, Data: lineEnds(t), Line: line}, stack, seenRoot); err != nil {
				return err
			}
		case xml.CharData:
			if len(stack) == 0 {
				if len(bytes.Trim(t, " \t\r\n")) != 0 {
					return p.errf(ErrMalformed, line, "text outside the root element")
				}
				continue
			}
			parent := stack[len(stack)-1]
			if n := len(parent.Children); n > 0 && parent.Children[n-1].Kind == Text {
				parent.Children[n-1].Data += string(t) // CDATA next to text
				continue
			}
			if err := p.add(&Node{Kind: Text, Data: string(t), Line: line}, stack, seenRoot); err != nil {
				return err
			}
		case xml.StartElement:
			if len(stack) == 0 && seenRoot {
				return p.errf(ErrMalformed, line, "second root element <%s>", qname(t.Name))
			}
			if len(stack) >= p.lim.MaxDepth {
				return p.errf(ErrRefused, line, "elements nested deeper than %d", p.lim.MaxDepth)
			}
			if len(t.Attr) > p.lim.MaxAttributes {
				return p.errf(ErrRefused, line, "more than %d attributes on <%s>", p.lim.MaxAttributes, qname(t.Name))
			}
			raw, err := rawAttrValues(p.src[start:off])
			if err != nil || len(raw) != len(t.Attr) {
				return p.errf(ErrMalformed, line, "start tag <%s>: cannot read attributes", qname(t.Name))
			}
			n := &Node{Kind: Element, Prefix: t.Name.Space, Local: t.Name.Local, Line: line, Start: start}
			sc := &scope{parent: cur}
			for i, a := range t.Attr {
				v := raw[i]
				switch {
				case a.Name.Space == "" && a.Name.Local == "xmlns":
					sc.decls = append(sc.decls, NSDecl{"", v})
				case a.Name.Space == "xmlns":
					if v == "" {
						return p.errf(ErrMalformed, line, "namespace prefix %q undeclared with an empty URI", a.Name.Local)
					}
					if a.Name.Local == "xmlns" || (a.Name.Local == "xml") != (v == NSXML) || v == NSXMLNS {
						return p.errf(ErrMalformed, line, "reserved namespace binding xmlns:%s=%q", a.Name.Local, v)
					}
					sc.decls = append(sc.decls, NSDecl{a.Name.Local, v})
				default:
					n.Attrs = append(n.Attrs, Attr{Prefix: a.Name.Space, Local: a.Name.Local, Value: v})
				}
			}
			for i, d := range sc.decls {
				for _, e := range sc.decls[:i] {
					if e.Prefix == d.Prefix {
						return p.errf(ErrMalformed, line, "namespace prefix %q declared twice", d.Prefix)
					}
				}
			}
			n.NS = sc.decls
			uri, ok := sc.lookup(n.Prefix)
			if !ok {
				return p.errf(ErrMalformed, line, "undeclared namespace prefix %q", n.Prefix)
			}
			n.Space = uri
			for i := range n.Attrs {
				a := &n.Attrs[i]
				if a.Prefix != "" {
					if a.Space, ok = sc.lookup(a.Prefix); !ok {
						return p.errf(ErrMalformed, line, "undeclared namespace prefix %q", a.Prefix)
					}
				}
				for _, b := range n.Attrs[:i] {
					if b.Space == a.Space && b.Local == a.Local {
						return p.errf(ErrMalformed, line, "duplicate attribute %s on <%s>", a.Local, qname(t.Name))
					}
				}
			}
			if err := p.add(n, stack, seenRoot); err != nil {
				return err
			}
			if len(stack) == 0 {
				seenRoot = true
				p.doc.Root = n
			}
			stack = append(stack, n)
			scopes = append(scopes, cur)
			cur = sc
		case xml.EndElement:
			if len(stack) == 0 {
				return p.errf(ErrMalformed, line, "unexpected end tag </%s>", qname(t.Name))
			}
			n := stack[len(stack)-1]
			if t.Name.Space != n.Prefix || t.Name.Local != n.Local {
				return p.errf(ErrMalformed, line, "end tag </%s> does not match <%s> of line %d", qname(t.Name), n.qname(), n.Line)
			}
			n.EndTag, n.End = start, off
			if start == off {
				n.EndTag = off // <x/>: the decoder reports the end where the start ended
			}
			stack = stack[:len(stack)-1]
			cur = scopes[len(scopes)-1]
			scopes = scopes[:len(scopes)-1]
		}
	}
	if len(stack) > 0 {
		n := stack[len(stack)-1]
		return p.errf(ErrMalformed, p.lineAt(len(p.src)), "unexpected end of document in <%s> of line %d", n.qname(), n.Line)
	}
	if p.doc.Root == nil {
		return fmt.Errorf("%w: no root element", ErrMalformed)
	}
	return nil
}

// add appends n to the innermost open element, or to the prolog or epilog.
func (p *parser) add(n *Node, stack []*Node, seenRoot bool) error {
	p.nodes++
	if p.nodes > p.lim.MaxNodes {
		return p.errf(ErrRefused, n.Line, "more than %d nodes", p.lim.MaxNodes)
	}
	if len(stack) == 0 {
		switch {
		case n.Kind == Element:
		case seenRoot:
			p.doc.Epilog = append(p.doc.Epilog, n)
		default:
			p.doc.Prolog = append(p.doc.Prolog, n)
		}
		return nil
	}
	parent := stack[len(stack)-1]
	n.Parent = parent
	parent.Children = append(parent.Children, n)
	return nil
}

// lineEnds normalizes line ends as XML 1.0 §2.11 says (encoding/xml does
// so for text and we do for attributes, but not for comments and PIs).
func lineEnds(b []byte) string {
	if bytes.IndexByte(b, '\r') < 0 {
		return string(b)
	}
	return strings.ReplaceAll(strings.ReplaceAll(string(b), "\r\n", "\n"), "\r", "\n")
}

// checkDecl accepts an XML declaration only for version 1.0 and UTF-8.
func checkDecl(inst string) error {
	if v := declAttr(inst, "version"); v != "1.0" {
		return fmt.Errorf("XML version %q: only 1.0 is accepted", v)
	}
	if e := declAttr(inst, "encoding"); e != "" && !strings.EqualFold(e, "utf-8") {
		return fmt.Errorf("encoding %q: only UTF-8 is accepted", e)
	}
	return nil
}

func declAttr(inst, name string) string {
	i := strings.Index(inst, name)
	if i < 0 {
		return ""
	}
	rest := strings.TrimLeft(inst[i+len(name):], " \t\r\n")
	if !strings.HasPrefix(rest, "=") {
		return ""
	}
	rest = strings.TrimLeft(rest[1:], " \t\r\n")
	if rest == "" || (rest[0] != '"' && rest[0] != '\'') {
		return ""
	}
	q := rest[0]
	j := strings.IndexByte(rest[1:], q)
	if j < 0 {
		return ""
	}
	return rest[1 : 1+j]
}

// rawAttrValues returns the normalized values of the attributes of a raw
// start tag, in order. The tag is well-formed (encoding/xml accepted it):
// values are quoted and contain no '<'.
func rawAttrValues(tag []byte) ([]string, error) {
	var out []string
	i := bytes.IndexAny(tag, " \t\r\n")
	if i < 0 {
		return nil, nil
	}
	for i < len(tag) {
		for i < len(tag) && strings.IndexByte(" \t\r\n", tag[i]) >= 0 {
			i++
		}
		if i >= len(tag) || tag[i] == '>' || tag[i] == '/' {
			break
		}
		eq := bytes.IndexByte(tag[i:], '=')
		if eq < 0 {
			return nil, errors.New("attribute without value")
		}
		i += eq + 1
		for i < len(tag) && strings.IndexByte(" \t\r\n", tag[i]) >= 0 {
			i++
		}
		if i >= len(tag) || (tag[i] != '"' && tag[i] != '\'') {
			return nil, errors.New("unquoted attribute value")
		}
		q := tag[i]
		end := bytes.IndexByte(tag[i+1:], q)
		if end < 0 {
			return nil, errors.New("unterminated attribute value")
		}
		v, err := normalizeAttr(tag[i+1 : i+1+end])
		if err != nil {
			return nil, err
		}
		out = append(out, v)
		i += end + 2
	}
	return out, nil
}

// normalizeAttr decodes references and normalizes whitespace (XML 1.0
// §2.11 line ends, then §3.3.3 for CDATA attributes).
func normalizeAttr(raw []byte) (string, error) {
	var b strings.Builder
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch c {
		case '\r':
			if i+1 < len(raw) && raw[i+1] == '\n' {
				i++
			}
			b.WriteByte(' ')
		case '\n', '\t':
			b.WriteByte(' ')
		case '&':
			j := bytes.IndexByte(raw[i:], ';')
			if j < 0 {
				return "", errors.New("unterminated reference")
			}
			ref := string(raw[i+1 : i+j])
			i += j
			switch ref {
			case "lt":
				b.WriteByte('<')
			case "gt":
				b.WriteByte('>')
			case "amp":
				b.WriteByte('&')
			case "apos":
				b.WriteByte('\'')
			case "quot":
				b.WriteByte('"')
			default:
				r, ok := charRef(ref)
				if !ok {
					return "", fmt.Errorf("unknown entity &%s;", ref)
				}
				b.WriteRune(r)
			}
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}

func charRef(ref string) (rune, bool) {
	if !strings.HasPrefix(ref, "#") || len(ref) < 2 {
		return 0, false
	}
	var n uint64
	digits, base := ref[1:], uint64(10)
	if digits[0] == 'x' {
		digits, base = digits[1:], 16
	}
	if digits == "" || len(digits) > 8 {
		return 0, false
	}
	for _, c := range digits {
		var d uint64
		switch {
		case c >= '0' && c <= '9':
			d = uint64(c - '0')
		case base == 16 && c >= 'a' && c <= 'f':
			d = uint64(c-'a') + 10
		case base == 16 && c >= 'A' && c <= 'F':
			d = uint64(c-'A') + 10
		default:
			return 0, false
		}
		n = n*base + d
	}
	r := rune(n)
	if n > utf8.MaxRune || !utf8.ValidRune(r) {
		return 0, false
	}
	return r, true
}

func qname(n xml.Name) string {
	if n.Space == "" {
		return n.Local
	}
	return n.Space + ":" + n.Local
}

func (n *Node) qname() string { return qname(xml.Name{Space: n.Prefix, Local: n.Local}) }

// Is reports whether n is the element {space}local.
func (n *Node) Is(space, local string) bool {
	return n != nil && n.Kind == Element && n.Space == space && n.Local == local
}

// Elements returns n's child elements.
func (n *Node) Elements() []*Node {
	var out []*Node
	for _, c := range n.Children {
		if c.Kind == Element {
			out = append(out, c)
		}
	}
	return out
}

// Child returns the first child element {space}local, or nil.
func (n *Node) Child(space, local string) *Node {
	for _, c := range n.Children {
		if c.Is(space, local) {
			return c
		}
	}
	return nil
}

// Attr returns the value of the unqualified attribute local.
func (n *Node) Attr(local string) (string, bool) {
	for _, a := range n.Attrs {
		if a.Space == "" && a.Local == local {
			return a.Value, true
		}
	}
	return "", false
}

// Text returns the concatenated text of n's direct text children.
func (n *Node) Text() string {
	var b strings.Builder
	for _, c := range n.Children {
		if c.Kind == Text {
			b.WriteString(c.Data)
		}
	}
	return b.String()
}

// Walk calls f for n and every element below it, in document order, until f
// returns false.
func (n *Node) Walk(f func(*Node) bool) bool {
	if !f(n) {
		return false
	}
	for _, c := range n.Children {
		if c.Kind == Element && !c.Walk(f) {
			return false
		}
	}
	return true
}
