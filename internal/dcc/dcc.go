// Package dcc handles Digital Calibration Certificates (PTB's DCC XML,
// https://ptb.de/dcc): schema validation (package schema), XAdES signing
// and verification (package xades), the metadata the V&V registry keeps,
// and sealing for the client with CMS envelopes (package envelope).
//
// Signed bytes are never re-serialized: Sign inserts the signature into the
// input as given, and everything else reads the bytes it is handed.
package dcc

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/fieldtrust/fieldtrust/internal/dcc/schema"
	"github.com/fieldtrust/fieldtrust/internal/dcc/xades"
	"github.com/fieldtrust/fieldtrust/internal/dcc/xmltree"
)

// MaxBytes bounds a DCC document (and so everything that reads one).
var MaxBytes = xmltree.DefaultLimits.MaxBytes

// Parse parses a DCC document with the hardened parser.
func Parse(src []byte) (*xmltree.Document, error) {
	return xmltree.Parse(src, xmltree.DefaultLimits)
}

// Validate parses and schema-validates a DCC. errs lists the violations
// with their lines (empty when valid); err means it could not be validated
// (malformed or refused XML, not a DCC, an unsupported version).
func Validate(src []byte) (version string, errs []schema.Error, err error) {
	doc, err := Parse(src)
	if err != nil {
		return "", nil, err
	}
	return schema.Validate(doc)
}

// Sign validates a DCC and signs it (XAdES baseline-B). Only valid DCCs of
// schema 3.2.0 or later are signed: earlier schemas have no place for
// ds:Signature, so a signed 3.1 document would no longer validate.
func Sign(src []byte, key crypto.Signer, chain []*x509.Certificate, at time.Time) ([]byte, error) {
	doc, err := Parse(src)
	if err != nil {
		return nil, err
	}
	version, errs, err := schema.Validate(doc)
	if err != nil {
		return nil, err
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("the DCC does not validate against schema %s (%d errors, first: %s): fix it before signing", version, len(errs), errs[0])
	}
	if !schema.AtLeast(version, schema.SignatureSince) {
		return nil, fmt.Errorf("schema %s has no ds:Signature slot: signed DCCs need schema %s or later", version, schema.SignatureSince)
	}
	return xades.Sign(src, key, chain, xades.SignOptions{Time: at})
}

// Report is the outcome of Verify.
type Report struct {
	xades.Result
	SchemaVersion string
	SchemaErrors  []schema.Error
	Metadata      *Metadata // nil unless the document parsed as a DCC
}

// Verify parses, schema-validates and verifies a signed DCC. It never
// returns nil.
func Verify(src []byte, opts xades.VerifyOptions) *Report {
	doc, err := Parse(src)
	if err != nil {
		st := xades.SchemaInvalid
		if errors.Is(err, xmltree.ErrRefused) {
			st = xades.Unsupported
		}
		return &Report{Result: xades.Result{Status: st, Reason: err.Error()}}
	}
	r := &Report{}
	if md, err := Extract(doc); err == nil {
		r.Metadata = md
	}
	version, errs, err := schema.Validate(doc)
	r.SchemaVersion = version
	switch {
	case errors.Is(err, schema.ErrNotDCC):
		r.Status, r.Reason = xades.SchemaInvalid, err.Error()
		return r
	case err != nil:
		r.Status, r.Reason = xades.Unsupported, err.Error()
		return r
	case len(errs) > 0:
		r.Status, r.SchemaErrors = xades.SchemaInvalid, errs
		r.Reason = fmt.Sprintf("%d schema %s errors, first: %s", len(errs), version, errs[0])
		return r
	}
	r.Result = *xades.Verify(doc, opts)
	return r
}

// EquipmentID is one identification of a calibrated item
// (items/item/identifications/identification).
type EquipmentID struct {
	Issuer string `json:"issuer"` // manufacturer, calibrationLaboratory, customer, owner, other
	Value  string `json:"value"`
}

// EquipmentIssuers are the issuers an identification may name (the DCC
// schema's enumeration, unchanged from 3.1 to 3.3).
var EquipmentIssuers = []string{"manufacturer", "calibrationLaboratory", "customer", "owner", "other"}

// MaxText bounds a text field taken from the network (an identification's
// value, a DCC id, a reason): the registry's lookup bound.
const MaxText = 1000

// CheckText refuses text that is empty when required, longer than
// MaxText, not UTF-8 or with control characters: what the registry and
// the fleet link accept of a name they store and show.
func CheckText(what, s string, required bool) error {
	switch {
	case s == "" && required:
		return fmt.Errorf("%s is empty", what)
	case len(s) > MaxText || !utf8.ValidString(s) || strings.ContainsFunc(s, unicode.IsControl):
		return fmt.Errorf("%s: printable UTF-8, at most %d bytes", what, MaxText)
	}
	return nil
}

// CheckDate refuses a date that is neither empty nor an xs:date (a day,
// with an optional timezone): what Performed and Due read.
func CheckDate(what, s string) error {
	if s == "" {
		return nil
	}
	if _, ok := day(s); !ok || len(s) > 16 {
		return fmt.Errorf("%s %q: an xs:date (YYYY-MM-DD, optional timezone)", what, s)
	}
	return nil
}

// Check refuses an identification whose issuer is not one of
// EquipmentIssuers or whose value CheckText refuses.
func (e EquipmentID) Check() error {
	if !slices.Contains(EquipmentIssuers, e.Issuer) {
		return fmt.Errorf("issuer %q: one of %v, as the DCC's identification names it", e.Issuer, EquipmentIssuers)
	}
	return CheckText("identification value", e.Value, true)
}

// Metadata is what the registry records of a DCC.
type Metadata struct {
	ID              string        `json:"dcc_id"` // coreData/uniqueIdentifier
	SchemaVersion   string        `json:"schema_version"`
	Lab             string        `json:"lab"` // calibrationLaboratory/contact/name
	Equipment       []EquipmentID `json:"equipment"`
	PerformanceDate string        `json:"performance_date,omitempty"` // endPerformanceDate, else beginPerformanceDate
	IssueDate       string        `json:"issue_date,omitempty"`       // coreData/issueDate (3.3.0)
	DueDate         string        `json:"due_date,omitempty"`         // see dueDate
	ContentHash     string        `json:"content_hash"`               // hex SHA-256 of the document bytes
}

// day parses the date at the start of an xs:date (a timezone suffix is
// ignored: a day's precision is all a calibration date carries) as the
// start of that day in UTC.
func day(s string) (time.Time, bool) {
	if len(s) < 10 {
		return time.Time{}, false
	}
	t, err := time.Parse("2006-01-02", s[:10])
	return t, err == nil
}

// Performed is the start (UTC) of the day the calibration was performed:
// measurements from then on are taken under this DCC (until the next).
func (m *Metadata) Performed() (time.Time, bool) { return day(m.PerformanceDate) }

// Due is the first instant the calibration is overdue: the start (UTC) of
// the day after the due date. ok is false when the DCC states no due date.
// The one place of the rule: registry lookups (overdue) and the fleet
// link's flags (package calibration) both use it.
func (m *Metadata) Due() (at time.Time, ok bool) {
	t, ok := day(m.DueDate)
	if !ok {
		return time.Time{}, false
	}
	return t.AddDate(0, 0, 1), true
}

// Extract reads the registry metadata of a parsed DCC.
func Extract(doc *xmltree.Document) (*Metadata, error) {
	version, err := schema.Version(doc)
	if err != nil {
		return nil, err
	}
	ns := schema.Namespace
	h := sha256.Sum256(doc.Src)
	md := &Metadata{SchemaVersion: version, ContentHash: fmt.Sprintf("%x", h)}
	admin := doc.Root.Child(ns, "administrativeData")
	if admin == nil {
		return nil, errors.New("DCC without administrativeData")
	}
	core := admin.Child(ns, "coreData")
	if core == nil {
		return nil, errors.New("DCC without coreData")
	}
	md.ID = strings.TrimSpace(textOf(core.Child(ns, "uniqueIdentifier")))
	if md.ID == "" {
		return nil, errors.New("DCC without coreData/uniqueIdentifier")
	}
	md.PerformanceDate = strings.TrimSpace(textOf(core.Child(ns, "endPerformanceDate")))
	if md.PerformanceDate == "" {
		md.PerformanceDate = strings.TrimSpace(textOf(core.Child(ns, "beginPerformanceDate")))
	}
	md.IssueDate = strings.TrimSpace(textOf(core.Child(ns, "issueDate")))
	if lab := admin.Child(ns, "calibrationLaboratory"); lab != nil {
		if c := lab.Child(ns, "contact"); c != nil {
			md.Lab = contentText(c.Child(ns, "name"))
		}
	}
	if items := admin.Child(ns, "items"); items != nil {
		for _, it := range items.Elements() {
			if !it.Is(ns, "item") {
				continue
			}
			ids := it.Child(ns, "identifications")
			if ids == nil {
				continue
			}
			for _, id := range ids.Elements() {
				if id.Is(ns, "identification") {
					e := EquipmentID{Issuer: strings.TrimSpace(textOf(id.Child(ns, "issuer"))), Value: strings.TrimSpace(textOf(id.Child(ns, "value")))}
					if e.Value != "" {
						md.Equipment = append(md.Equipment, e)
					}
				}
			}
		}
	}
	md.DueDate = dueDate(admin, md.PerformanceDate)
	return md, nil
}

// dueDate is the recalibration due date a DCC states: the dcc:date of a
// statement whose refType names recalibration, or the performance date
// plus its dcc:period (years, months, days). The DCC schema has no
// dedicated element; this follows the good-practice use of statements.
func dueDate(admin *xmltree.Node, performed string) string {
	ns := schema.Namespace
	st := admin.Child(ns, "statements")
	if st == nil {
		return ""
	}
	for _, s := range st.Elements() {
		ref, _ := s.Attr("refType")
		if !s.Is(ns, "statement") || !strings.Contains(strings.ToLower(ref), "recalibration") {
			continue
		}
		if d := strings.TrimSpace(textOf(s.Child(ns, "date"))); d != "" {
			return d
		}
		if p := strings.TrimSpace(textOf(s.Child(ns, "period"))); p != "" && performed != "" {
			if t, err := time.Parse("2006-01-02", performed); err == nil {
				if y, m, d, ok := parsePeriod(p); ok {
					return t.AddDate(y, m, d).Format("2006-01-02")
				}
			}
		}
	}
	return ""
}

// parsePeriod reads an xs:duration of years, months and days (P1Y6M).
func parsePeriod(p string) (y, m, d int, ok bool) {
	if !strings.HasPrefix(p, "P") || len(p) < 3 || strings.Contains(p, "T") {
		return 0, 0, 0, false
	}
	num := ""
	for _, c := range p[1:] {
		switch {
		case c >= '0' && c <= '9':
			num += string(c)
		case c == 'Y' || c == 'M' || c == 'D':
			n, err := strconv.Atoi(num)
			if err != nil || n > 100 {
				return 0, 0, 0, false
			}
			switch c {
			case 'Y':
				y = n
			case 'M':
				m = n
			case 'D':
				d = n
			}
			num = ""
		default:
			return 0, 0, 0, false
		}
	}
	return y, m, d, num == ""
}

func textOf(n *xmltree.Node) string {
	if n == nil {
		return ""
	}
	return n.Text()
}

// contentText is the first dcc:content of a text block (the default
// language).
func contentText(n *xmltree.Node) string {
	if n == nil {
		return ""
	}
	if c := n.Child(schema.Namespace, "content"); c != nil {
		return strings.TrimSpace(c.Text())
	}
	return strings.TrimSpace(n.Text())
}

// JSONReport is the JSON form of a verification, shared by
// 'fieldtrust dcc verify --json' and the registry's verify endpoint.
type JSONReport struct {
	Result        string         `json:"result"` // valid|manipulated|untrusted|revoked|schema-invalid|unsupported
	Reason        string         `json:"reason"`
	Reference     string         `json:"reference,omitempty"`
	RevokedAt     string         `json:"revoked_at,omitempty"`
	RevokedSerial string         `json:"revoked_serial,omitempty"`
	SigningTime   string         `json:"signing_time,omitempty"`
	VerifiedAt    string         `json:"verified_at,omitempty"`
	Signer        string         `json:"signer,omitempty"`
	SchemaVersion string         `json:"schema_version,omitempty"`
	Errors        []schema.Error `json:"errors,omitempty"`
	DCC           *Metadata      `json:"dcc,omitempty"`
}

// JSON returns the report's JSON form.
func (r *Report) JSON() JSONReport {
	j := JSONReport{Result: string(r.Status), Reason: r.Reason, Reference: r.Reference, RevokedSerial: r.RevokedSerial,
		SchemaVersion: r.SchemaVersion, Errors: r.SchemaErrors, DCC: r.Metadata}
	ts := func(t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return t.UTC().Format(time.RFC3339)
	}
	j.RevokedAt, j.SigningTime, j.VerifiedAt = ts(r.RevokedAt), ts(r.SigningTime), ts(r.VerifiedAt)
	if r.Signer != nil {
		j.Signer = r.Signer.Subject.String()
	}
	return j
}
