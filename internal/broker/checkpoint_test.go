package broker

import (
	"path/filepath"
	"testing"

	"go.etcd.io/bbolt"
)

// TestApplyMutsKeepsLastState: whatever order of puts, deletes and prefix
// deletions a round holds, each key ends in the state of its last
// mutation, as if every mutation had been applied in order.
func TestApplyMutsKeepsLastState(t *testing.T) {
	put := func(k, v string) walMut { return walMut{op: mutPut, key: []byte(k), val: []byte(v)} }
	del := func(k string) walMut { return walMut{op: mutDelete, key: []byte(k)} }
	prefix := func(p string) walMut { return walMut{op: mutDeletePrefix, key: []byte(p)} }
	for _, c := range []struct {
		name   string
		before map[string]string
		muts   []walMut
		want   map[string]string
	}{
		{"put then newer put", nil, []walMut{put("a", "1"), put("a", "2")}, map[string]string{"a": "2"}},
		{"put then delete", nil, []walMut{put("a", "1"), del("a")}, map[string]string{}},
		{"delete of a stored key", map[string]string{"a": "0"}, []walMut{del("a")}, map[string]string{}},
		{"delete then put", map[string]string{"a": "0"}, []walMut{del("a"), put("a", "1")}, map[string]string{"a": "1"}},
		{"interleaved keys", nil, []walMut{put("a", "1"), put("b", "1"), del("a"), put("b", "2"), put("a", "3")}, map[string]string{"a": "3", "b": "2"}},
		{"prefix deletion between puts", map[string]string{"p/x": "0"}, []walMut{put("p/y", "1"), prefix("p/"), put("p/z", "1")}, map[string]string{"p/z": "1"}},
		{"prefix deletion after a put", nil, []walMut{put("p/y", "1"), prefix("p/")}, map[string]string{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			db, err := bbolt.Open(filepath.Join(t.TempDir(), "b.db"), 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			got := map[string]string{}
			err = db.Update(func(tx *bbolt.Tx) error {
				b, err := tx.CreateBucket([]byte(bucketName))
				if err != nil {
					return err
				}
				for k, v := range c.before {
					if err := b.Put([]byte(k), []byte(v)); err != nil {
						return err
					}
				}
				if err := applyMuts(b, c.muts, 7); err != nil {
					return err
				}
				return b.ForEach(func(k, v []byte) error {
					if string(k) != keyWALApplied {
						got[string(k)] = string(v)
					}
					return nil
				})
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(c.want) {
				t.Fatalf("got %v; want %v", got, c.want)
			}
			for k, v := range c.want {
				if got[k] != v {
					t.Fatalf("got %v; want %v", got, c.want)
				}
			}
		})
	}
}
