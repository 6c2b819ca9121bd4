package registrystore

import (
	"context"
	"fmt"
	"strings"
)

// Binding says which instrument a measurement device is from a measurement
// time on (migration 0021): the fleet link's side of a DCC's equipment
// identification. An empty Value says the device is no registered
// instrument from SinceMs on.
type Binding struct {
	Gateway, Device string
	SinceMs         int64
	Issuer, Value   string
	SetBy           string
	SetAtMs         int64
	// Proof is what the platform verified of the binding (migration
	// 0028), empty when it is only declared.
	Proof string
}

// PutBinding records a binding; one at the same device and time replaces
// it (PUT is idempotent).
func (s *Store) PutBinding(ctx context.Context, b Binding) error {
	_, err := s.db.ExecContext(ctx, s.q(`INSERT INTO device_equipment (gateway, device, since_ms, issuer, value, set_by, set_at, proof) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (gateway, device, since_ms) DO UPDATE SET issuer = excluded.issuer, value = excluded.value, set_by = excluded.set_by, set_at = excluded.set_at, proof = excluded.proof`),
		b.Gateway, b.Device, b.SinceMs, b.Issuer, b.Value, b.SetBy, b.SetAtMs, b.Proof)
	if err != nil {
		return fmt.Errorf("bind %s/%s: %w", b.Gateway, b.Device, err)
	}
	return nil
}

// maxBindings bounds what one device's read returns: an instrument is
// swapped a few times in a device's life, not thousands.
const maxBindings = 1000

// Bindings returns a device's bindings, oldest first (at most the latest
// 1000).
func (s *Store) Bindings(ctx context.Context, gateway, device string) ([]Binding, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT since_ms, issuer, value, set_by, set_at, proof FROM device_equipment
		WHERE gateway = ? AND device = ? ORDER BY since_ms DESC LIMIT ?`), gateway, device, maxBindings)
	if err != nil {
		return nil, fmt.Errorf("bindings of %s/%s: %w", gateway, device, err)
	}
	defer rows.Close()
	var out []Binding
	for rows.Next() {
		b := Binding{Gateway: gateway, Device: device}
		if err := rows.Scan(&b.SinceMs, &b.Issuer, &b.Value, &b.SetBy, &b.SetAtMs, &b.Proof); err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}

// Device names a device by its gateway's path and its name.
type Device struct{ Gateway, Device string }

// bindingsChunk is how many devices one BindingsOf query asks for: two
// parameters each, far below either database's limit.
const bindingsChunk = 200

// BindingsOf returns the bindings of several devices, oldest first per
// device (at most the latest 1000 of each), with one query per 200 devices:
// a fleet view flags every device it lists, and a query per device cost a
// fleet of 250 more than its snapshots did. Devices without bindings are
// absent from the map.
func (s *Store) BindingsOf(ctx context.Context, devices []Device) (map[Device][]Binding, error) {
	out := map[Device][]Binding{}
	for len(devices) > 0 {
		chunk := devices[:min(len(devices), bindingsChunk)]
		devices = devices[len(chunk):]
		args := make([]any, 0, 2*len(chunk)+1)
		for _, d := range chunk {
			args = append(args, d.Gateway, d.Device)
		}
		args = append(args, maxBindings)
		rows, err := s.db.QueryContext(ctx, s.q(`SELECT gateway, device, since_ms, issuer, value, set_by, set_at, proof FROM (
			SELECT *, row_number() OVER (PARTITION BY gateway, device ORDER BY since_ms DESC) AS newest FROM device_equipment
			WHERE (gateway, device) IN (VALUES `+strings.TrimSuffix(strings.Repeat("(?, ?), ", len(chunk)), ", ")+`)) AS b
			WHERE newest <= ? ORDER BY gateway, device, since_ms`), args...)
		if err != nil {
			return nil, fmt.Errorf("bindings of %d devices: %w", len(chunk), err)
		}
		for rows.Next() {
			var b Binding
			if err := rows.Scan(&b.Gateway, &b.Device, &b.SinceMs, &b.Issuer, &b.Value, &b.SetBy, &b.SetAtMs, &b.Proof); err != nil {
				rows.Close()
				return nil, fmt.Errorf("bindings of %d devices: %w", len(chunk), err)
			}
			k := Device{b.Gateway, b.Device}
			out[k] = append(out[k], b)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("bindings of %d devices: %w", len(chunk), err)
		}
	}
	return out, nil
}
