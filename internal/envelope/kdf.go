package envelope

import (
	"crypto"
	"encoding/asn1"
	"encoding/binary"
	"fmt"

	_ "crypto/sha1" // the KDF of dhSinglePass-stdDH-sha1kdf-scheme
	_ "crypto/sha256"
	_ "crypto/sha512"
)

// x963KDF is the ANSI X9.63 key derivation function that RFC 5753 §7.2
// prescribes for the dhSinglePass-stdDH-*kdf-scheme algorithms (SEC 1
// §3.6.1): K = H(Z || 00000001 || sharedInfo) || H(Z || 00000002 || ...)
// truncated to n bytes. It is not HKDF: there is no extract step.
func x963KDF(h crypto.Hash, z, sharedInfo []byte, n int) []byte {
	out := make([]byte, 0, n+h.Size())
	var ctr [4]byte
	for i := uint32(1); len(out) < n; i++ {
		binary.BigEndian.PutUint32(ctr[:], i)
		d := h.New()
		d.Write(z)
		d.Write(ctr[:])
		d.Write(sharedInfo)
		out = d.Sum(out)
	}
	return out[:n]
}

// sharedInfo encodes ECC-CMS-SharedInfo (RFC 5753 §7.2) for a key wrap
// algorithm identifier exactly as it appears in the message (so that a
// sender's choice of absent or NULL parameters is honoured), the optional
// user keying material and the KEK length.
func sharedInfo(wrapAlg []byte, ukm []byte, kekLen int) ([]byte, error) {
	var supp [4]byte
	binary.BigEndian.PutUint32(supp[:], uint32(kekLen*8))
	si := eccCMSSharedInfo{
		KeyInfo:     asn1.RawValue{FullBytes: wrapAlg},
		EntityUInfo: ukm,
		SuppPubInfo: supp[:],
	}
	b, err := asn1.Marshal(si)
	if err != nil {
		return nil, fmt.Errorf("encode ECC-CMS-SharedInfo: %w", err)
	}
	return b, nil
}
