package site

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/fieldtrust/fieldtrust/internal/tacs"
)

// itemVersion is the first byte of every queued item.
const itemVersion = 1

const flagRetain = 1

// message is one MQTT message on its way up: what the site's queue holds.
type message struct {
	Topic   string
	Payload []byte
	Retain  bool
}

// encodeItem is the queue's on-disk form of m: version, flags, the topic's
// length (uvarint), the topic, the payload.
func encodeItem(m message) []byte {
	b := make([]byte, 0, 2+binary.MaxVarintLen32+len(m.Topic)+len(m.Payload))
	var flags byte
	if m.Retain {
		flags |= flagRetain
	}
	b = append(b, itemVersion, flags)
	b = binary.AppendUvarint(b, uint64(len(m.Topic)))
	b = append(b, m.Topic...)
	return append(b, m.Payload...)
}

var errBadItem = errors.New("site queue: malformed item")

// decodeItem parses what encodeItem wrote. The queue file is the site's
// own, but a damaged one must give an error, not a panic or a message on a
// topic nobody checked: the topic must be one TACS could allow.
func decodeItem(b []byte) (message, error) {
	if len(b) < 3 {
		return message{}, fmt.Errorf("%w: %d bytes", errBadItem, len(b))
	}
	if b[0] != itemVersion {
		return message{}, fmt.Errorf("%w: version %d", errBadItem, b[0])
	}
	if b[1]&^flagRetain != 0 {
		return message{}, fmt.Errorf("%w: flags %#x", errBadItem, b[1])
	}
	n, k := binary.Uvarint(b[2:])
	if k <= 0 || k != len(binary.AppendUvarint(nil, n)) || n > tacs.MaxTopicLen || n > uint64(len(b)-2-k) {
		return message{}, fmt.Errorf("%w: topic length", errBadItem)
	}
	rest := b[2+k:]
	m := message{Topic: string(rest[:n]), Payload: append([]byte(nil), rest[n:]...), Retain: b[1]&flagRetain != 0}
	if err := tacs.ValidateTopic(m.Topic); err != nil {
		return message{}, fmt.Errorf("%w: %v", errBadItem, err)
	}
	return m, nil
}
