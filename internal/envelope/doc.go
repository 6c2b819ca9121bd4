// Package envelope seals payloads end to end so that the brokers, queues and
// databases they pass through can neither read nor forge them: the
// originator signs (CMS SignedData, RFC 5652) and then encrypts for exactly
// the allowed readers (CMS AuthEnvelopedData, RFC 5083, with AES-256-GCM,
// RFC 5084, and ECDH ephemeral-static key agreement, RFC 5753). It is plain
// CMS: `openssl cms -decrypt` opens what Seal produces and Open opens what
// `openssl cms -encrypt -aes-256-gcm` produces.
//
// Seal and Open are the whole API; NewSealer and NewOpener prepare the keys
// once for callers that seal or open many envelopes. What a valid chain is
// and whom it identifies is not this package's business: Open asks a
// SignerVerifier (internal/pki implements it; ChainVerifier is the plain
// x509 + CRL one) and finds signer certificates through a SignerLookup.
//
// # Wire profile
//
// Everything is DER (definite lengths). Seal writes exactly this; Open
// accepts the variations noted in brackets, which OpenSSL produces.
//
//	ContentInfo                                  RFC 5652 §3
//	  contentType   id-ct-authEnvelopedData      1.2.840.113549.1.9.16.1.23
//	  content [0] EXPLICIT AuthEnvelopedData     RFC 5083 §2.1
//	    version                0
//	    originatorInfo         absent [ignored]
//	    recipientInfos  SET OF, one kari per recipient curve (P-256 first,
//	                    then P-384) [any number up to MaxRecipients; other
//	                    RecipientInfo kinds are skipped]
//	      kari [1] KeyAgreeRecipientInfo          RFC 5652 §6.2.2, RFC 5753 §3.1
//	        version            3
//	        originator [0]     originatorKey [1]: algorithm id-ecPublicKey
//	                           (1.2.840.10045.2.1), parameters absent [NULL or
//	                           the recipient's curve OID]; publicKey BIT STRING:
//	                           compressed ECPoint, 02/03 || X (SEC 1 §2.3.3;
//	                           33 bytes P-256, 49 P-384) [uncompressed
//	                           04 || X || Y, 65/97 bytes, as OpenSSL and
//	                           Seal before 2026-11 write; hybrid 06/07
//	                           refused], a fresh ephemeral key per message
//	                           and curve
//	        ukm                absent [used as entityUInfo if present]
//	        keyEncryptionAlgorithm
//	                           dhSinglePass-stdDH-sha256kdf-scheme 1.3.132.1.11.1
//	                           [sha1kdf 1.3.133.16.840.63.0.2, sha384kdf .11.2,
//	                           sha512kdf .11.3], parameters: KeyWrapAlgorithm
//	                           aes256-wrap 2.16.840.1.101.3.4.1.45, parameters
//	                           absent [aes128-wrap .5, aes192-wrap .25]
//	        recipientEncryptedKeys SEQUENCE OF
//	          rid      rKeyId [0] { subjectKeyIdentifier OCTET STRING }
//	                   [issuerAndSerialNumber]
//	          encryptedKey  OCTET STRING (40 bytes): RFC 3394 wrap of the
//	                   32-byte content key under
//	                   KEK = X9.63-KDF-SHA256(Z, ECC-CMS-SharedInfo{
//	                         keyInfo: the wrap AlgorithmIdentifier as sent,
//	                         suppPubInfo: 00 00 01 00 (256 bits)}) (RFC 5753 §7.2)
//	    authEncryptedContentInfo
//	      contentType          id-signedData 1.2.840.113549.1.7.2 (signed) or
//	                           id-data 1.2.840.113549.1.7.1 (unsigned)
//	      contentEncryptionAlgorithm
//	                           aes256-GCM 2.16.840.1.101.3.4.1.46 [aes128-GCM
//	                           .6, aes192-GCM .26], parameters GCMParameters
//	                           { aes-nonce OCTET STRING (12 random bytes),
//	                             aes-ICVlen 16 } [ICVlen 12..16]
//	      encryptedContent [0] IMPLICIT OCTET STRING (primitive): ciphertext
//	                           without the tag
//	    authAttrs              absent [if present, GCM AAD per RFC 5083 §2.2]
//	    mac  OCTET STRING      the 16-byte GCM tag
//	    unauthAttrs            absent [ignored]
//
// The signed content, as it is encrypted, is a bare SignedData (RFC 5652
// §5.1; not wrapped in a ContentInfo, as CMS nests content types):
//
//	SignedData
//	  version               3
//	  digestAlgorithms      SET { sha256 2.16.840.1.101.3.4.2.1 }
//	  encapContentInfo      { id-data, eContent [0] EXPLICIT OCTET STRING }
//	                        [detached content is refused]
//	  certificates [0]      absent, or signer certificate then intermediates
//	                        (Signer.EmbedCerts) [at most 8]
//	  signerInfos           SET of exactly one SignerInfo:
//	    version             3 [1]
//	    sid                 subjectKeyIdentifier [0] IMPLICIT OCTET STRING
//	                        [issuerAndSerialNumber]
//	    digestAlgorithm     sha256, parameters absent [sha384, sha512]
//	    signedAttrs [0]     DER-sorted SET OF: content-type (id-data),
//	                        message-digest (SHA-256 of the content),
//	                        signing-time (UTCTime until 2049) [required:
//	                        content-type and message-digest; other
//	                        attributes, e.g. SMIMECapabilities, ignored]
//	    signatureAlgorithm  ecdsa-with-SHA256 1.2.840.10045.4.3.2 [SHA384,
//	                        SHA512 matching the digest; id-ecPublicKey]
//	    signature           ECDSA over SHA-256 of the signedAttrs encoded
//	                        with a SET OF tag (0x31)
//
// A standalone SignedData (what `openssl cms -sign` writes) is checked with
// Verify.
//
// # Order of checks and errors
//
// Open checks size and DER structure, finds our recipient entry, unwraps
// the content key, checks the GCM tag, then the signed attributes and the
// signature, then the signer's chain and revocation through the
// SignerVerifier. Every error wraps one of the sentinel errors in errors.go.
//
// The outer content type (signed or unsigned) is not covered by the GCM tag
// (RFC 5083 authenticates only authAttrs, which OpenSSL 3.0 does not write
// and failed to parse in our test, so Seal does not write them). That is why unsigned content is refused unless the opener
// sets OpenOptions.AllowUnsigned: an attacker who relabels a signed
// envelope as id-data gets ErrUnsigned, not a plaintext.
//
// The envelope bytes are not unique to the content: a relay can re-encode
// parts the GCM tag and the signature do not cover (absent vs NULL curve
// parameters, the ephemeral point compressed or not, or negated: -P has the
// same x, so it yields the same key) and the envelope still opens, to the
// same, genuine content. Deduplicate on Opened.ContentHash or the content,
// never on the envelope bytes.
//
// # Evolving the format
//
// Any change must keep `openssl cms -decrypt` working on what we write and
// keep opening what older sealers wrote: add algorithms to the accepted
// variations first, switch Seal to them a release later, never reuse an
// OID for a different meaning. (Compressed ephemeral points were accepted
// and written in the same change, before any release: an Open from before
// that change refuses them as ErrMalformed.) Bounds live in limits.go.
package envelope
