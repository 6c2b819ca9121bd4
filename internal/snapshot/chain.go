package snapshot

import "bytes"

// Head is the last accepted snapshot of a device: what the next one must
// link to.
type Head struct {
	Seq  uint64
	Hash [32]byte
}

// Link says how a snapshot relates to its device's head.
type Link int

// The ways a snapshot can follow a head. Only LinkFirst and LinkNext extend
// the chain cleanly; LinkDuplicate is a QoS 1 redelivery to store once;
// the rest are integrity events to record, never to accept silently.
const (
	LinkFirst     Link = iota // no head yet and seq 1
	LinkNext                  // seq = head+1 and prev = head's hash
	LinkDuplicate             // the head itself again (same seq, same hash)
	LinkGap                   // seq > head+1, or no head and seq > 1: snapshots are missing
	LinkStale                 // seq < head: late, reordered or replayed
	LinkFork                  // same seq with other content, or prev does not match the head
)

var linkNames = [...]string{"first", "next", "duplicate", "gap", "stale", "fork"}

func (l Link) String() string {
	if int(l) < len(linkNames) {
		return linkNames[l]
	}
	return "unknown"
}

// Classify relates s (whose encoding hashes to hash) to head, which is nil
// if the device has no accepted snapshot yet.
func Classify(head *Head, s *Snapshot, hash [32]byte) Link {
	if head == nil {
		if s.Seq == 1 {
			return LinkFirst
		}
		return LinkGap
	}
	switch {
	case s.Seq == head.Seq:
		if hash == head.Hash {
			return LinkDuplicate
		}
		return LinkFork
	case s.Seq < head.Seq:
		return LinkStale
	case s.Seq == head.Seq+1:
		if bytes.Equal(s.Prev, head.Hash[:]) {
			return LinkNext
		}
		return LinkFork
	default:
		return LinkGap
	}
}

// Builder makes consecutive snapshots of one device: it numbers them and
// links each to the previous one's hash. The gateway persists Head across
// restarts and seeds a Builder with it.
type Builder struct {
	Device     string
	DeviceType string
	Head       *Head // nil before the first snapshot
}

// Next encodes the next snapshot with the given time and values, and
// advances the head.
func (b *Builder) Next(timeMillis int64, values []Value) ([]byte, *Snapshot, error) {
	s := &Snapshot{Version: Version, Device: b.Device, DeviceType: b.DeviceType, Seq: 1, TimeMillis: timeMillis, Values: values}
	if b.Head != nil {
		s.Seq = b.Head.Seq + 1
		s.Prev = append([]byte(nil), b.Head.Hash[:]...)
	}
	enc, err := Encode(s)
	if err != nil {
		return nil, nil, err
	}
	b.Head = &Head{Seq: s.Seq, Hash: Hash(enc)}
	return enc, s, nil
}
