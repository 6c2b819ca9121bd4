package envelope

// Bounds on what Seal produces and Open accepts. Every bound is checked
// before the work it protects is done, so a hostile envelope costs at most a
// linear scan of MaxEnvelopeBytes plus maxKeyAttempts ECDH operations.
// Changing a bound is a wire-compatibility decision: an envelope sealed
// under a larger bound may be refused by an older opener.
const (
	// MaxEnvelopeBytes bounds the DER envelope (and so the plaintext).
	// Payloads are snapshots (hundreds of bytes), commands, firmware
	// manifests (not images: those travel by signed URL) and Digital
	// Calibration Certificates, which are XML of up to a few MiB. 16 MiB
	// leaves room for large DCCs while keeping the two in-memory copies
	// Open needs (ciphertext and plaintext) small enough for a gateway.
	MaxEnvelopeBytes = 16 << 20

	// MaxRecipients bounds the recipient entries of one envelope (summed
	// over all RecipientInfos). An account's policy names a handful of
	// readers (vendor, customer, calibration lab, a few platform
	// services); 1024 is two orders of magnitude above that. Each entry
	// costs one ECDH on Seal (about 50 µs on P-256, 150 µs on P-384) and
	// about 70 bytes on the wire, so 10,000 recipients would mean 0.5 s
	// of CPU on a gateway and 700 kB of header per 100-byte snapshot.
	// Fan-out to thousands of readers belongs to a service that opens
	// and re-seals, not to the device. Seal refuses more; Open reports
	// ErrMalformed.
	MaxRecipients = 1024

	// maxRecipientInfos bounds the RecipientInfo entries. OpenSSL puts
	// every recipient in its own KeyAgreeRecipientInfo, so this cannot
	// be smaller than MaxRecipients.
	maxRecipientInfos = MaxRecipients

	// maxKeyAttempts bounds the ECDH + unwrap attempts on Open. An
	// honest sender lists each recipient once; a hostile one could list
	// our key identifier in a thousand KeyAgreeRecipientInfos, each with
	// its own ephemeral key, to make us do a thousand ECDHs.
	maxKeyAttempts = 4

	// maxASN1Depth bounds the nesting of constructed DER elements. The
	// deepest legitimate path (a name inside an embedded certificate
	// inside SignedData) is 8 levels; 24 leaves room for extensions
	// without letting a hostile nesting cost recursion.
	maxASN1Depth = 24

	// maxCertificates bounds the certificates embedded in SignedData: the
	// transport and e2e chains are at most four deep (root, master
	// account, account, device); twice that is plenty.
	maxCertificates = 8

	// maxSignerInfos is one: the platform's trust model has exactly one
	// originator per payload, and accepting several would force a policy
	// on which signer "counts".
	maxSignerInfos = 1

	// maxSignedAttrs bounds the signed attributes. We write three;
	// OpenSSL writes four (adding SMIMECapabilities).
	maxSignedAttrs = 16
)
