package envelope

import (
	"bytes"
	"crypto"
	"encoding/hex"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp/aes/keywrap"
)

// TestKeyWrapRFC3394 pins the key wrap dependency to the test vectors of
// RFC 3394 §4.1-4.6, so that an upgrade cannot silently change it.
func TestKeyWrapRFC3394(t *testing.T) {
	tests := []struct{ name, kek, key, wrapped string }{
		{"4.1 128-bit key with 128-bit KEK",
			"000102030405060708090A0B0C0D0E0F",
			"00112233445566778899AABBCCDDEEFF",
			"1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5"},
		{"4.2 128-bit key with 192-bit KEK",
			"000102030405060708090A0B0C0D0E0F1011121314151617",
			"00112233445566778899AABBCCDDEEFF",
			"96778B25AE6CA435F92B5B97C050AED2468AB8A17AD84E5D"},
		{"4.3 128-bit key with 256-bit KEK",
			"000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F",
			"00112233445566778899AABBCCDDEEFF",
			"64E8C3F9CE0F5BA263E9777905818A2A93C8191E7D6E8AE7"},
		{"4.4 192-bit key with 192-bit KEK",
			"000102030405060708090A0B0C0D0E0F1011121314151617",
			"00112233445566778899AABBCCDDEEFF0001020304050607",
			"031D33264E15D33268F24EC260743EDCE1C6C7DDEE725A936BA814915C6762D2"},
		{"4.5 192-bit key with 256-bit KEK",
			"000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F",
			"00112233445566778899AABBCCDDEEFF0001020304050607",
			"A8F9BC1612C68B3FF6E6F4FBE30E71E4769C8B80A32CB8958CD5D17D6B254DA1"},
		{"4.6 256-bit key with 256-bit KEK",
			"000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F",
			"00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F",
			"28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kek, key, want := unhex(t, tt.kek), unhex(t, tt.key), unhex(t, tt.wrapped)
			got, err := keywrap.Wrap(kek, key)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("Wrap = %X, %v; want %X", got, err, want)
			}
			back, err := keywrap.Unwrap(kek, want)
			if err != nil || !bytes.Equal(back, key) {
				t.Fatalf("Unwrap = %X, %v; want %X", back, err, key)
			}
			bad := bytes.Clone(want)
			bad[len(bad)-1] ^= 1
			if _, err := keywrap.Unwrap(kek, bad); err == nil {
				t.Fatal("Unwrap accepted a modified key")
			}
		})
	}
}

// TestX963KDF checks the KDF against NIST CAVP's ANSI X9.63 vectors
// (ansx963_2001.rsp, SHA-256, 192-bit Z, no SharedInfo, 128-bit key, COUNT 0).
// OpenSSL interop covers the SHA-1 and SHA-256 variants with SharedInfo.
func TestX963KDF(t *testing.T) {
	z := unhex(t, "96c05619d56c328ab95fe84b18264b08725b85e33fd34f08")
	si := unhex(t, "")
	want := unhex(t, "443024c3dae66b95e6f5670601558f71")
	if got := x963KDF(crypto.SHA256, z, si, len(want)); !bytes.Equal(got, want) {
		t.Fatalf("x963KDF = %x, want %x", got, want)
	}
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
