package registry

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/fieldtrust/fieldtrust/internal/ledger"
)

// Mirror copies another registry's log into a read-only registry: it
// fetches the source's signed head (checked against the pinned source
// certificate), appends the entries it lacks to its own log, and requires
// its recomputed root to equal the head's — so a source that rewrote or
// forked its log is refused, not copied. The mirror then serves the same
// lookups and proofs, under the source's signed heads.
type Mirror struct {
	Source string // base URL of the source registry
	Pin    *x509.Certificate
	Local  *Registry // opened without a key
	Client *http.Client
}

func (m *Mirror) get(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, m.Source+path, nil)
	if err != nil {
		return err
	}
	c := m.Client
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("mirror: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("mirror: GET %s: %s: %s", path, resp.Status, bytes.TrimSpace(b))
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(v)
}

// Sync brings the mirror up to the source's latest head; it returns the
// number of entries copied.
func (m *Mirror) Sync(ctx context.Context) (int, error) {
	var h Head
	if err := m.get(ctx, "/api/v1/registry/log/head", &h); err != nil {
		return 0, err
	}
	c, err := VerifyHead(h, m.Pin)
	if err != nil {
		return 0, fmt.Errorf("mirror: source head: %w", err)
	}
	r := m.Local
	r.mu.Lock()
	defer r.mu.Unlock()
	size, root, err := r.log.Size()
	if err != nil {
		return 0, err
	}
	if c.Size < size {
		return 0, fmt.Errorf("mirror: the source's head has %d entries, fewer than the %d mirrored: it rolled its log back", c.Size, size)
	}
	copied := 0
	for size < c.Size {
		end := min(size+1000, c.Size)
		var page struct {
			Entries []string `json:"entries"`
		}
		if err := m.get(ctx, "/api/v1/registry/log/entries?start="+strconv.FormatUint(size, 10)+"&end="+strconv.FormatUint(end, 10), &page); err != nil {
			return copied, err
		}
		if len(page.Entries) == 0 || uint64(len(page.Entries)) > end-size {
			return copied, fmt.Errorf("mirror: the source returned %d entries for [%d, %d)", len(page.Entries), size, end)
		}
		var leaves [][]byte
		for _, e := range page.Entries {
			b, err := base64.StdEncoding.DecodeString(e)
			if err != nil {
				return copied, fmt.Errorf("mirror: entry not base64")
			}
			leaves = append(leaves, b)
		}
		// Nothing is stored that the signed head does not vouch for: the
		// page must extend our log to a prefix of the source's tree.
		if err := m.checkPrefix(ctx, leaves, c); err != nil {
			return copied, err
		}
		first, n, rt, err := r.log.Append(ctx, leaves)
		if err != nil {
			return copied, err
		}
		for i, l := range leaves {
			if err := r.apply(ctx, l, first+uint64(i)); err != nil {
				return copied, err
			}
		}
		if err := r.st.SetApplied(ctx, n); err != nil {
			return copied, err
		}
		size, root, copied = n, rt, copied+len(leaves)
	}
	if hex.EncodeToString(root) != h.Root {
		return copied, fmt.Errorf("mirror: after %d entries our root is %x, the source's signed head says %s: the source's log is not consistent with what it served", size, root, h.Root)
	}
	sig, _ := base64.StdEncoding.DecodeString(h.Signature)
	defer r.forgetHead()
	return copied, r.st.PutHead(ctx, c.Size, []byte(h.Checkpoint), sig)
}

// checkPrefix checks that the local log with leaves appended is a prefix
// of the source's signed tree c: equal to it at its size, else consistent
// with it by the source's consistency proof.
func (m *Mirror) checkPrefix(ctx context.Context, leaves [][]byte, c ledger.Checkpoint) error {
	size, root, err := m.Local.log.RootAfter(leaves)
	if err != nil {
		return err
	}
	if size == c.Size {
		if !bytes.Equal(root, c.Root) {
			return fmt.Errorf("mirror: the source's entries up to %d give root %x, its signed head says %x: refused, nothing stored", size, root, c.Root)
		}
		return nil
	}
	var p struct {
		Hashes []string `json:"hashes"`
	}
	if err := m.get(ctx, "/api/v1/registry/log/consistency?from="+strconv.FormatUint(size, 10)+"&to="+strconv.FormatUint(c.Size, 10), &p); err != nil {
		return err
	}
	var hashes [][]byte
	for _, h := range p.Hashes {
		b, err := base64.StdEncoding.DecodeString(h)
		if err != nil {
			return errors.New("mirror: consistency proof hash not base64")
		}
		hashes = append(hashes, b)
	}
	if err := ledger.VerifyConsistency(size, c.Size, hashes, root, c.Root); err != nil {
		return fmt.Errorf("mirror: the source's entries up to %d are not a prefix of its signed head of size %d (%v): refused, nothing stored", size, c.Size, err)
	}
	return nil
}
