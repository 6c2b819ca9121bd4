// Package claim checks device claims before they are stored: one claim
// from its parts, the trusted manufacturer CA a claim names, and a claims
// CSV file with an error per bad line. 'fieldtrust device claim' and the
// console's admin view both use it, so a file is judged the same way
// wherever it is uploaded.
package claim

import (
	"crypto/x509"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode"

	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// The CSV columns.
const (
	ColPath         = "path"
	ColSerial       = "onboarding_serial"
	ColSubject      = "onboarding_subject"
	ColManufacturer = "manufacturer"
)

// New validates one claim: a device path master/account/device and
// exactly one of the onboarding certificate's serial (hex) and subject
// common name.
func New(path, serial, subject string, now time.Time) (store.Claim, error) {
	p, err := pki.ParsePath(path)
	if err != nil {
		return store.Claim{}, err
	}
	if len(p) != pki.MaxPathElements {
		return store.Claim{}, fmt.Errorf("path %q has %d element(s); a device path is master/account/device", path, len(p))
	}
	c := store.Claim{Path: p.String(), CreatedAt: now}
	switch {
	case serial != "" && subject != "":
		return store.Claim{}, errors.New("give either an onboarding serial or an onboarding subject, not both")
	case serial != "":
		n, err := pki.ParseSerial(serial)
		if err != nil {
			return store.Claim{}, err
		}
		c.Kind, c.Value = store.ClaimBySerial, pki.SerialHex(n)
	case subject != "":
		if len(subject) > 64 || strings.IndexFunc(subject, unicode.IsControl) >= 0 || strings.TrimSpace(subject) != subject {
			return store.Claim{}, fmt.Errorf("onboarding subject %q: a common name of 1 to 64 characters without control characters or surrounding spaces", subject)
		}
		c.Kind, c.Value = store.ClaimBySubject, subject
	default:
		return store.Claim{}, errors.New("no onboarding serial or subject")
	}
	return c, nil
}

// Manufacturer is the trusted manufacturer CA a claim names.
type Manufacturer struct{ KeyID, Subject string }

// SpecError says that a manufacturer name matched none or several trusted
// CAs, or that none was named while several are trusted: the caller's
// input is wrong, not the store.
type SpecError struct{ msg string }

func (e *SpecError) Error() string { return e.msg }

// ResolveManufacturer finds the trusted manufacturer CA spec names: its
// SHA-256 fingerprint (any case, colons optional, or a unique prefix of at
// least 8 hex digits), its subject as 'manufacturer list' shows it, or its
// common name. An empty spec means the only trusted one.
func ResolveManufacturer(list []store.Manufacturer, spec string) (Manufacturer, error) {
	if len(list) == 0 {
		return Manufacturer{}, errors.New("no manufacturer CA is trusted; trust the one that issued the onboarding certificates first ('fieldtrust manufacturer trust CA.pem')")
	}
	spec = strings.TrimSpace(spec)
	var matches []store.Manufacturer
	if spec == "" {
		if len(list) > 1 {
			return Manufacturer{}, &SpecError{fmt.Sprintf("%d manufacturer CAs are trusted; say which one issued the onboarding certificate with --manufacturer or a %s column (fingerprint or subject, see 'fieldtrust manufacturer list')", len(list), ColManufacturer)}
		}
		matches = list
	} else {
		hex := strings.ToLower(strings.ReplaceAll(spec, ":", ""))
		for _, m := range list {
			cert, err := x509.ParseCertificate(m.DER)
			if err != nil {
				return Manufacturer{}, fmt.Errorf("trusted manufacturer CA %s does not parse: %w", m.Subject, err)
			}
			if (len(hex) >= 8 && strings.HasPrefix(m.Fingerprint, hex)) || m.Subject == spec || cert.Subject.CommonName == spec {
				matches = append(matches, m)
			}
		}
	}
	switch len(matches) {
	case 0:
		return Manufacturer{}, &SpecError{fmt.Sprintf("manufacturer %q names no trusted manufacturer CA; see 'fieldtrust manufacturer list'", spec)}
	case 1:
	default:
		return Manufacturer{}, &SpecError{fmt.Sprintf("manufacturer %q names %d trusted manufacturer CAs; give more of the SHA-256 fingerprint", spec, len(matches))}
	}
	cert, err := x509.ParseCertificate(matches[0].DER)
	if err != nil {
		return Manufacturer{}, fmt.Errorf("trusted manufacturer CA %s does not parse: %w", matches[0].Subject, err)
	}
	return Manufacturer{KeyID: pki.KeyID(cert), Subject: matches[0].Subject}, nil
}

// Find returns the live (unrevoked) claim with key k.
func Find(list []store.Claim, k store.ClaimKey) (store.Claim, bool) {
	for _, c := range list {
		if c.ClaimKey == k && !c.Revoked() {
			return c, true
		}
	}
	return store.Claim{}, false
}

// File is a checked claims file.
type File struct {
	Claims   []store.Claim
	Lines    []int    // the line of each claim
	Problems []string // every bad line, "line N: ..."; nothing is to be written if any
}

// ReadCSV reads and checks a claims file: a header row naming the columns
// (path, and onboarding_serial and/or onboarding_subject, optionally
// manufacturer), then one claim a line; '#' starts a comment line.
// existing are the stored claims (a live one with the same onboarding
// certificate is a problem), mfrs the trusted manufacturer CAs and mfr
// the default for lines without a manufacturer. name labels the file in
// errors. The error is for a file that cannot be judged at all (no header,
// an unknown column, nothing after the header, a read error).
func ReadCSV(r io.Reader, name string, existing []store.Claim, mfrs []store.Manufacturer, mfr string, now time.Time) (File, error) {
	cr := csv.NewReader(r)
	cr.TrimLeadingSpace = true
	cr.Comment = '#'
	header, err := cr.Read()
	if err != nil {
		return File{}, fmt.Errorf("%s: no header row (want %s,%s,%s): %w", name, ColPath, ColSerial, ColSubject, err)
	}
	col := map[string]int{}
	for i, h := range header {
		h = strings.ToLower(strings.TrimSpace(strings.TrimPrefix(h, "\ufeff")))
		switch h {
		case ColPath, ColSerial, ColSubject, ColManufacturer:
			if _, dup := col[h]; dup {
				return File{}, fmt.Errorf("%s line 1: column %q twice", name, h)
			}
			col[h] = i
		default:
			return File{}, fmt.Errorf("%s line 1: unknown column %q; the columns are %s, %s, %s and %s", name, h, ColPath, ColSerial, ColSubject, ColManufacturer)
		}
	}
	if _, ok := col[ColPath]; !ok {
		return File{}, fmt.Errorf("%s line 1: no %q column", name, ColPath)
	}
	_, hasSerial := col[ColSerial]
	_, hasSubject := col[ColSubject]
	if !hasSerial && !hasSubject {
		return File{}, fmt.Errorf("%s line 1: need a %q or %q column", name, ColSerial, ColSubject)
	}
	field := func(rec []string, name string) string {
		if i, ok := col[name]; ok && i < len(rec) {
			return strings.TrimSpace(rec[i])
		}
		return ""
	}
	seen := map[store.ClaimKey]int{} // -> line
	for _, c := range existing {
		if !c.Revoked() { // a revoked claim is replaced
			seen[c.ClaimKey] = 0
		}
	}
	// The default manufacturer is resolved once, and only if a line needs
	// it, so that a file naming one on every line works with several
	// trusted.
	var (
		defaultMfr     Manufacturer
		defaultMfrErr  error
		defaultMfrDone bool
	)
	byName := map[string]Manufacturer{}
	var f File
	for {
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) && pe.Err != csv.ErrFieldCount {
				f.Problems = append(f.Problems, fmt.Sprintf("line %d: %v", pe.Line, pe.Err))
				if pe.Err == csv.ErrQuote || pe.Err == csv.ErrBareQuote {
					continue
				}
				return File{Problems: f.Problems}, nil
			}
			if errors.As(err, &pe) {
				f.Problems = append(f.Problems, fmt.Sprintf("line %d: %d fields, the header has %d", pe.Line, len(rec), len(header)))
				continue
			}
			return File{}, fmt.Errorf("%s: %w", name, err)
		}
		line, _ := cr.FieldPos(0)
		c, err := New(field(rec, ColPath), field(rec, ColSerial), field(rec, ColSubject), now)
		if err != nil {
			f.Problems = append(f.Problems, fmt.Sprintf("line %d: %v", line, err))
			continue
		}
		var m Manufacturer
		if name := field(rec, ColManufacturer); name != "" {
			var ok bool
			if m, ok = byName[name]; !ok {
				if m, err = ResolveManufacturer(mfrs, name); err != nil {
					f.Problems = append(f.Problems, fmt.Sprintf("line %d: %v", line, err))
					continue
				}
				byName[name] = m
			}
		} else {
			if !defaultMfrDone {
				defaultMfr, defaultMfrErr = ResolveManufacturer(mfrs, mfr)
				defaultMfrDone = true
			}
			if defaultMfrErr != nil {
				f.Problems = append(f.Problems, fmt.Sprintf("line %d: %v", line, defaultMfrErr))
				continue
			}
			m = defaultMfr
		}
		c.ManufacturerKeyID, c.ManufacturerSubject = m.KeyID, m.Subject
		key := c.ClaimKey
		if prev, dup := seen[key]; dup {
			if prev == 0 {
				old, _ := Find(existing, key)
				f.Problems = append(f.Problems, fmt.Sprintf("line %d: onboarding %s %s is already claimed for %s", line, c.Kind, c.Value, old.Path))
			} else {
				f.Problems = append(f.Problems, fmt.Sprintf("line %d: onboarding %s %s is also on line %d", line, c.Kind, c.Value, prev))
			}
			continue
		}
		seen[key] = line
		f.Claims = append(f.Claims, c)
		f.Lines = append(f.Lines, line)
	}
	if len(f.Claims) == 0 && len(f.Problems) == 0 {
		return File{}, fmt.Errorf("%s: no claims after the header row", name)
	}
	if len(f.Problems) > 0 {
		f.Claims, f.Lines = nil, nil
	}
	return f, nil
}
