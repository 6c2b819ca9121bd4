package ledger

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/pki"
)

// MessageRecord is what the ledger leaf of a device message (a command,
// campaign notice, firmware download, command result, firmware status
// report or refusal: package devicemsg) commits to.
type MessageRecord struct {
	Kind, ID, Ref, Sender, Name string
	At                          time.Time // hashed in Unix milliseconds
	Body                        []byte    // the exact bytes sent or received
}

// Hash is the record hash: SHA-256 over "fieldtrust.device-message/v1",
// the kind, id, ref, sender and name, each length-prefixed (4 bytes
// big-endian), the time (Unix milliseconds, 8 bytes big-endian), then
// SHA-256 of the body. The leaf is LeafData(gateway, Hash).
func (m MessageRecord) Hash() [32]byte {
	h := sha256.New()
	field := func(s string) {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	field("fieldtrust.device-message/v1")
	for _, s := range []string{m.Kind, m.ID, m.Ref, m.Sender, m.Name} {
		field(s)
	}
	var at [8]byte
	binary.BigEndian.PutUint64(at[:], uint64(m.At.UnixMilli()))
	h.Write(at[:])
	body := sha256.Sum256(m.Body)
	h.Write(body[:])
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

// ExportMessage is one device message of an export (version 2): every
// field the record hash covers, so that a verifier recomputes it and
// proves its leaf against the export's tree head.
type ExportMessage struct {
	Gateway    string   `json:"gateway"` // master/account/gateway
	Kind       string   `json:"kind"`
	ID         string   `json:"id"`
	Ref        string   `json:"ref"`
	Sender     string   `json:"sender"`
	Name       string   `json:"name"`
	At         string   `json:"at"`          // RFC 3339, UTC, milliseconds: what the hash covers
	Body       string   `json:"body"`        // base64 (standard, padded) of the exact bytes
	RecordHash string   `json:"record_hash"` // hex; recomputed by the verifier, never trusted
	LeafIndex  uint64   `json:"leaf_index"`
	Proof      []string `json:"proof"` // hex inclusion proof against the export's tree head
}

// MaxMessageBody bounds one message's body in an export: the largest a
// device message may be (envelopes of commands and notices, reports,
// download records) with room to spare.
const MaxMessageBody = 1 << 20

// ExportMessageOf is the export form of a record of gateway gw.
func ExportMessageOf(gw string, m MessageRecord, leafIndex uint64, proof [][]byte) ExportMessage {
	rh := m.Hash()
	ps := make([]string, len(proof))
	for i, p := range proof {
		ps[i] = hex.EncodeToString(p)
	}
	return ExportMessage{Gateway: gw, Kind: m.Kind, ID: m.ID, Ref: m.Ref, Sender: m.Sender, Name: m.Name,
		At: time.UnixMilli(m.At.UnixMilli()).UTC().Format(time.RFC3339Nano), Body: base64.StdEncoding.EncodeToString(m.Body),
		RecordHash: hex.EncodeToString(rh[:]), LeafIndex: leafIndex, Proof: ps}
}

// VerifyMessage checks one exported message against a verified head:
// its fields are well formed, its record hash is what they hash to, and
// its leaf is in the tree at its index. It returns the record.
func VerifyMessage(head Checkpoint, e ExportMessage) (MessageRecord, error) {
	var m MessageRecord
	gw, err := pki.ParsePath(e.Gateway)
	if err != nil || len(gw) != 3 {
		return m, fmt.Errorf("gateway %q: want master/account/gateway", e.Gateway)
	}
	if e.Kind == "" || e.ID == "" || strings.ContainsRune(e.Kind+e.ID+e.Ref+e.Sender+e.Name, 0) {
		return m, errors.New("kind and id are required; no field may hold NUL")
	}
	at, err := time.Parse(time.RFC3339Nano, e.At)
	if err != nil {
		return m, fmt.Errorf("at %q: want RFC 3339", e.At)
	}
	if base64.StdEncoding.DecodedLen(len(e.Body)) > MaxMessageBody+3 {
		return m, fmt.Errorf("body larger than %d bytes", MaxMessageBody)
	}
	body, err := base64.StdEncoding.DecodeString(e.Body)
	if err != nil {
		return m, errors.New("body: not base64")
	}
	m = MessageRecord{Kind: e.Kind, ID: e.ID, Ref: e.Ref, Sender: e.Sender, Name: e.Name, At: at, Body: body}
	rh := m.Hash()
	if e.RecordHash != "" && !strings.EqualFold(e.RecordHash, hex.EncodeToString(rh[:])) {
		return m, fmt.Errorf("the fields hash to %x, not the record hash %s", rh, e.RecordHash)
	}
	if e.LeafIndex >= head.Size {
		return m, fmt.Errorf("leaf index %d is outside the tree of size %d", e.LeafIndex, head.Size)
	}
	hashes, err := decodeHashes(e.Proof)
	if err != nil {
		return m, fmt.Errorf("inclusion proof: %w", err)
	}
	if VerifyInclusion(LeafData(gw.String(), rh), e.LeafIndex, head.Size, hashes, head.Root) != nil {
		return m, fmt.Errorf("inclusion proof of leaf %d does not verify against the tree head of size %d: the message, its gateway, its leaf index or its proof is not what the platform logged", e.LeafIndex, head.Size)
	}
	return m, nil
}

// MessageError says which device message of an export failed which check.
type MessageError struct {
	Index int // position in the page's device_messages, from 0
	ID    string
	Err   error
}

func (e *MessageError) Error() string {
	return fmt.Sprintf("device message #%d (%s): %v", e.Index+1, e.ID, e.Err)
}

func (e *MessageError) Unwrap() error { return e.Err }
