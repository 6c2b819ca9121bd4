package sqlite

import (
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// A snapshot's values are one BLOB in its row (snapshots.vals), in received
// order, so that a snapshot re-encodes exactly and costs one row to write
// and to read instead of one per value. Each value is
//
//	uvarint(channel_id << 1 | integral)
//	integral = 1: zigzag varint of the value (integral values within ±2^53,
//	              except -0.0: 1 to 8 bytes, most counters 1 or 2)
//	integral = 0: the IEEE 754 bits of the value, 8 bytes little endian
//
// so every float64 comes back bit for bit, as the row-per-value layout of
// migration 0004 guaranteed (it wrote integral values as INTEGER too).

// maxValuesBlob bounds what decodeValues accepts: 4096 values (the
// snapshot limit) of at most 10 + 8 bytes.
const maxValuesBlob = 4096 * 18

// appendValues appends the encoding of values with their channel ids.
func appendValues(b []byte, chIDs []int64, values []float64) []byte {
	for i, v := range values {
		ch := uint64(chIDs[i]) << 1
		if v == math.Trunc(v) && math.Abs(v) <= 1<<53 && !(v == 0 && math.Signbit(v)) {
			b = binary.AppendUvarint(b, ch|1)
			b = binary.AppendVarint(b, int64(v))
			continue
		}
		b = binary.AppendUvarint(b, ch)
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v))
	}
	return b
}

var errValuesBlob = errors.New("corrupt snapshot values")

// decodeValues calls fn for every value of an encoding, in order.
func decodeValues(b []byte, fn func(ch int64, v float64)) error {
	if len(b) > maxValuesBlob {
		return fmt.Errorf("%w: %d bytes", errValuesBlob, len(b))
	}
	for len(b) > 0 {
		k, n := binary.Uvarint(b)
		if n <= 0 || k>>1 > math.MaxInt64>>1 {
			return fmt.Errorf("%w: bad channel", errValuesBlob)
		}
		b = b[n:]
		ch := int64(k >> 1)
		if k&1 == 1 {
			x, n := binary.Varint(b)
			if n <= 0 || x > 1<<53 || x < -(1<<53) {
				return fmt.Errorf("%w: bad integral value", errValuesBlob)
			}
			b = b[n:]
			fn(ch, float64(x))
			continue
		}
		if len(b) < 8 {
			return fmt.Errorf("%w: truncated value", errValuesBlob)
		}
		fn(ch, math.Float64frombits(binary.LittleEndian.Uint64(b)))
		b = b[8:]
	}
	return nil
}

// packLegacyValues is the Go step of migration 0008: it encodes the
// snapshot_values rows of every snapshot into its vals column, in received
// order, and drops the table.
func packLegacyValues(ctx context.Context, tx *sql.Tx) error {
	rows, err := tx.QueryContext(ctx, `SELECT snapshot_id, channel_id, value FROM snapshot_values ORDER BY snapshot_id, ord`)
	if err != nil {
		return fmt.Errorf("read snapshot values: %w", err)
	}
	defer rows.Close()
	update, err := tx.PrepareContext(ctx, `UPDATE snapshots SET vals = ? WHERE id = ?`)
	if err != nil {
		return err
	}
	defer update.Close()
	cur := int64(-1)
	var chIDs []int64
	var vals []float64
	flush := func() error {
		if cur < 0 {
			return nil
		}
		_, err := update.ExecContext(ctx, appendValues(nil, chIDs, vals), cur)
		chIDs, vals = chIDs[:0], vals[:0]
		return err
	}
	for rows.Next() {
		var id, ch int64
		var raw any
		if err := rows.Scan(&id, &ch, &raw); err != nil {
			return err
		}
		if id != cur {
			if err := flush(); err != nil {
				return err
			}
			cur = id
		}
		var v float64
		switch x := raw.(type) {
		case int64:
			v = float64(x)
		case float64:
			v = x
		default:
			return fmt.Errorf("snapshot %d: value of type %T", id, raw)
		}
		chIDs, vals = append(chIDs, ch), append(vals, v)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if err := flush(); err != nil {
		return err
	}
	rows.Close()
	_, err = tx.ExecContext(ctx, `DROP TABLE snapshot_values`)
	return err
}
