package envelope

import (
	"errors"
	"fmt"
)

// checkDER walks b as a sequence of DER elements before any decoder sees
// it. It enforces what encoding/asn1 and the bounds in limits.go assume:
// definite lengths only (no BER streaming), minimal length encodings,
// lengths that fit the input, and at most maxDepth levels of constructed
// elements. The walk is iterative over siblings and recursive only in
// depth, which the bound limits, so its cost is linear in len(b).
func checkDER(b []byte, maxDepth int) error {
	for len(b) > 0 {
		n, err := checkElement(b, maxDepth)
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

var errDepth = errors.New("ASN.1 nesting too deep")

// checkElement checks one element at the start of b and returns its length.
func checkElement(b []byte, depth int) (int, error) {
	if depth <= 0 {
		return 0, errDepth
	}
	if len(b) < 2 {
		return 0, errors.New("truncated element header")
	}
	constructed := b[0]&0x20 != 0
	off := 1
	if b[0]&0x1f == 0x1f { // high tag number form
		for {
			if off >= len(b) {
				return 0, errors.New("truncated tag")
			}
			c := b[off]
			off++
			if c&0x80 == 0 {
				break
			}
			if off > 4 {
				return 0, errors.New("tag number too large")
			}
		}
	}
	if off >= len(b) {
		return 0, errors.New("truncated length")
	}
	l := int(b[off])
	off++
	if l == 0x80 {
		return 0, errors.New("indefinite length (BER) is not DER; re-encode the input as DER")
	}
	if l > 0x80 {
		nb := l & 0x7f
		if nb > 4 {
			return 0, errors.New("length too large")
		}
		if off+nb > len(b) {
			return 0, errors.New("truncated length")
		}
		l = 0
		for i := 0; i < nb; i++ {
			l = l<<8 | int(b[off+i])
		}
		if b[off] == 0 || l < 0x80 {
			return 0, errors.New("non-minimal length encoding")
		}
		off += nb
	}
	if l > len(b)-off {
		return 0, fmt.Errorf("element length %d exceeds the %d bytes left", l, len(b)-off)
	}
	if constructed {
		if err := checkDER(b[off:off+l], depth-1); err != nil {
			return 0, err
		}
	}
	return off + l, nil
}
