package registry

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/fieldtrust/fieldtrust/internal/dcc"
)

// maxEquipment bounds the identifications of a DCC declared by statement
// (a DCC names one item's few identifications, not thousands).
const maxEquipment = 100

// ParseStatement parses and checks the JSON of a lab's signed statement:
// a known action, and for register the metadata the registry stores and
// shows (bounded, printable text; issuers of the DCC schema; dates that
// are xs:dates; a hex SHA-256), for revoke a DCC id and a bounded reason.
// The signature is checked before (the content is the lab's), but a
// lab's key is one more hostile input: this is the one place of the rule.
func ParseStatement(b []byte) (*Statement, error) {
	var st Statement
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		return nil, fmt.Errorf("statement: %w", err)
	}
	if dec.More() {
		return nil, errors.New("statement: data after the JSON object")
	}
	switch st.Action {
	case "register":
		if st.DCCID != "" || st.Reason != "" {
			return nil, errors.New("statement: register takes dcc, not dcc_id or reason")
		}
		if err := checkMetadata(st.Metadata); err != nil {
			return nil, fmt.Errorf("statement: %w", err)
		}
	case "revoke":
		if st.Metadata != nil {
			return nil, errors.New("statement: revoke takes dcc_id and reason, not dcc")
		}
		if err := dcc.CheckText("dcc_id", st.DCCID, true); err != nil {
			return nil, fmt.Errorf("statement: %w", err)
		}
		if err := dcc.CheckText("reason", st.Reason, false); err != nil {
			return nil, fmt.Errorf("statement: %w", err)
		}
	default:
		return nil, fmt.Errorf("statement: unknown action %q (register or revoke)", st.Action)
	}
	return &st, nil
}

func checkMetadata(md *dcc.Metadata) error {
	if md == nil {
		return errors.New("register needs dcc (dcc_id, content_hash, equipment, …)")
	}
	if h, err := hex.DecodeString(md.ContentHash); err != nil || len(h) != 32 || hex.EncodeToString(h) != md.ContentHash {
		return errors.New("dcc.content_hash: the document's SHA-256, 64 lowercase hex digits")
	}
	for _, f := range []struct {
		name, v  string
		required bool
	}{{"dcc.dcc_id", md.ID, true}, {"dcc.lab", md.Lab, false}, {"dcc.schema_version", md.SchemaVersion, false}} {
		if err := dcc.CheckText(f.name, f.v, f.required); err != nil {
			return err
		}
	}
	for _, f := range []struct{ name, v string }{{"dcc.performance_date", md.PerformanceDate}, {"dcc.issue_date", md.IssueDate}, {"dcc.due_date", md.DueDate}} {
		if err := dcc.CheckDate(f.name, f.v); err != nil {
			return err
		}
	}
	if len(md.Equipment) > maxEquipment {
		return fmt.Errorf("dcc.equipment: at most %d identifications", maxEquipment)
	}
	for i, e := range md.Equipment {
		if err := e.Check(); err != nil {
			return fmt.Errorf("dcc.equipment[%d]: %w", i, err)
		}
	}
	return nil
}
