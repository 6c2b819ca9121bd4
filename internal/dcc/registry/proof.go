package registry

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/fieldtrust/fieldtrust/internal/ledger"
)

// VerifyHead checks a head's signature with the registry's pinned
// certificate and returns its checkpoint. It needs no network.
func VerifyHead(h Head, signer *x509.Certificate) (ledger.Checkpoint, error) {
	c, err := ledger.ParseCheckpointFor([]byte(h.Checkpoint), Origin)
	if err != nil {
		return c, err
	}
	if c.Size != h.Size || hex.EncodeToString(c.Root) != h.Root {
		return c, errors.New("tree head: size or root differ from the checkpoint")
	}
	sig, err := base64.StdEncoding.DecodeString(h.Signature)
	if err != nil {
		return c, errors.New("tree head: signature is not base64")
	}
	pub, ok := signer.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return c, errors.New("registry signer key is not ECDSA")
	}
	d := sha256.Sum256([]byte(h.Checkpoint))
	if !ecdsa.VerifyASN1(pub, d[:], sig) {
		return c, errors.New("tree head: the signature does not verify with the registry's certificate")
	}
	return c, nil
}

// VerifyRecord checks, offline, that a record's entries are in the log
// whose head is given and that they say what the record says.
func VerifyRecord(h Head, signer *x509.Certificate, rec *Record) error {
	c, err := VerifyHead(h, signer)
	if err != nil {
		return err
	}
	if len(rec.Proofs) == 0 {
		return errors.New("record without proofs")
	}
	for i, p := range rec.Proofs {
		data, err := base64.StdEncoding.DecodeString(p.LeafData)
		if err != nil {
			return fmt.Errorf("proof %d: leaf data is not base64", i)
		}
		var hashes [][]byte
		for _, s := range p.Hashes {
			b, err := hex.DecodeString(s)
			if err != nil {
				return fmt.Errorf("proof %d: hash is not hex", i)
			}
			hashes = append(hashes, b)
		}
		if err := ledger.VerifyInclusion(data, p.LeafIndex, c.Size, hashes, c.Root); err != nil {
			return fmt.Errorf("proof %d (leaf %d): %w", i, p.LeafIndex, err)
		}
		var ev Event
		if err := json.Unmarshal(data, &ev); err != nil {
			return fmt.Errorf("proof %d: %w", i, err)
		}
		switch {
		case i == 0 && (ev.Type != "register" || ev.DCC == nil || ev.DCC.ID != rec.DCC.ID || ev.DCC.ContentHash != rec.DCC.ContentHash || ev.Lab != rec.Lab):
			return fmt.Errorf("proof 0: the logged registration is not this record's")
		case i == 1 && (ev.Type != "revoke" || ev.DCCID != rec.DCC.ID || ev.Reason != rec.RevokeReason):
			return fmt.Errorf("proof 1: the logged revocation is not this record's")
		}
	}
	if rec.Status == "revoked" && len(rec.Proofs) < 2 {
		return errors.New("a revoked record without the revocation's proof")
	}
	return nil
}

// VerifyConsistency checks that head old is a prefix of head new.
func VerifyConsistency(old, new Head, signer *x509.Certificate, proof [][]byte) error {
	a, err := VerifyHead(old, signer)
	if err != nil {
		return err
	}
	b, err := VerifyHead(new, signer)
	if err != nil {
		return err
	}
	if a.Size == b.Size && !bytes.Equal(a.Root, b.Root) {
		return errors.New("two heads of one size with different roots: the registry forked its log")
	}
	return ledger.VerifyConsistency(a.Size, b.Size, proof, a.Root, b.Root)
}
