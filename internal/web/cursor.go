package web

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"

	"github.com/fieldtrust/fieldtrust/internal/pki"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

// A cursor is what a page hands the client to ask for the next one:
// base64url (unpadded) of its JSON. It is not secret and not trusted: a
// client may send anything, so decoding checks every field is one a page
// could have written, and scope is still enforced by the store and TACS.

// maxCursor bounds an encoded cursor: paths are at most 3×64 bytes.
const maxCursor = 1024

// exportCursor is the position after the last snapshot of an export page,
// and the ledger size the export's first page covered: every page leaves
// out the snapshots at or beyond it (not_yet_covered), so that the pages
// of one export describe the same set of snapshots however long the
// client takes to fetch them.
type exportCursor struct {
	store.Cursor
	Covered uint64
}

func encodeToken(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // cursors are plain structs
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// errCursor is the answer to a cursor no page wrote.
var errCursor = errors.New("not a cursor from a previous page; start again without it")

func decodeToken(s string, v any) error {
	if len(s) > maxCursor {
		return errCursor
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return errCursor
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil || dec.More() {
		return errCursor
	}
	return nil
}

// checkPosition accepts the positions a record of the store has: a
// gateway path of three elements, a device element, a seq the store can
// hold and a measurement time.
func checkPosition(c store.Cursor) error {
	p, err := pki.ParsePath(c.Gateway)
	switch {
	case err != nil || len(p) != 3 || p.String() != c.Gateway:
		return fmt.Errorf("%w (gateway %q)", errCursor, c.Gateway)
	case pki.ValidateElement(c.Device) != nil:
		return fmt.Errorf("%w (device %q)", errCursor, c.Device)
	case c.Seq < 1 || c.Seq > math.MaxInt64:
		return fmt.Errorf("%w (seq %d)", errCursor, c.Seq)
	case c.Time.IsZero():
		return fmt.Errorf("%w (no time)", errCursor)
	}
	return nil
}

func encodeCursor(c *store.Cursor) string { return encodeToken(c) }

// decodeCursor decodes a cursor of the snapshot list.
func decodeCursor(s string) (*store.Cursor, error) {
	var c store.Cursor
	if err := decodeToken(s, &c); err != nil {
		return nil, err
	}
	if err := checkPosition(c); err != nil {
		return nil, err
	}
	return &c, nil
}

// decodeExportCursor decodes an export cursor. It does not know the
// ledger: the caller checks Covered against the latest head.
func decodeExportCursor(s string) (exportCursor, error) {
	var c exportCursor
	if err := decodeToken(s, &c); err != nil {
		return c, err
	}
	if err := checkPosition(c.Cursor); err != nil {
		return c, err
	}
	if c.Covered == 0 {
		return c, fmt.Errorf("%w (covers no ledger)", errCursor)
	}
	return c, nil
}
