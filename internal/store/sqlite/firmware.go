package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

// CreateCampaign implements store.Firmware.
func (s *Store) CreateCampaign(ctx context.Context, c store.Campaign, devices []store.CampaignDevice) error {
	scope, err := json.Marshal(c.Scope)
	if err != nil {
		return err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("create campaign: %w", err)
	}
	defer tx.Rollback()
	now := time.Now().UnixMilli()
	if _, err := tx.ExecContext(ctx, `INSERT INTO firmware_campaigns (id, version, device_type, target, scope, canary_percent, max_failures, state, stage, reason, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, c.ID, c.Version, c.DeviceType, c.Target, string(scope), c.CanaryPercent, c.MaxFailures, c.State, c.Stage, c.Reason, now, now); err != nil {
		if isUnique(err) {
			return fmt.Errorf("campaign %s: %w", c.ID, store.ErrExists)
		}
		return fmt.Errorf("create campaign: %w", err)
	}
	for _, d := range devices {
		if _, err := tx.ExecContext(ctx, `INSERT INTO firmware_campaign_devices (campaign_id, path, stage, state, reason, updated_at) VALUES (?, ?, ?, ?, ?, ?)`,
			c.ID, d.Path, d.Stage, d.State, d.Reason, now); err != nil {
			return fmt.Errorf("create campaign: device %s: %w", d.Path, err)
		}
	}
	return tx.Commit()
}

const campaignColumns = `id, version, device_type, target, scope, canary_percent, max_failures, state, stage, reason, created_at, updated_at`

func scanCampaign(r scanner) (store.Campaign, error) {
	var c store.Campaign
	var scope string
	var created, updated int64
	if err := r.Scan(&c.ID, &c.Version, &c.DeviceType, &c.Target, &scope, &c.CanaryPercent, &c.MaxFailures, &c.State, &c.Stage, &c.Reason, &created, &updated); err != nil {
		return c, err
	}
	c.Created, c.Updated = time.UnixMilli(created).UTC(), time.UnixMilli(updated).UTC()
	return c, json.Unmarshal([]byte(scope), &c.Scope)
}

// Campaign implements store.Firmware.
func (s *Store) Campaign(ctx context.Context, id string) (store.Campaign, error) {
	c, err := scanCampaign(s.db.QueryRowContext(ctx, `SELECT `+campaignColumns+` FROM firmware_campaigns WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return c, fmt.Errorf("campaign %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return c, fmt.Errorf("campaign %s: %w", id, err)
	}
	return c, nil
}

// Campaigns implements store.Firmware.
func (s *Store) Campaigns(ctx context.Context, states ...string) ([]store.Campaign, error) {
	q := `SELECT ` + campaignColumns + ` FROM firmware_campaigns`
	var args []any
	if len(states) > 0 {
		q += ` WHERE state IN (?` + strings.Repeat(", ?", len(states)-1) + `)`
		for _, st := range states {
			args = append(args, st)
		}
	}
	rows, err := s.db.QueryContext(ctx, q+` ORDER BY created_at, id`, args...)
	if err != nil {
		return nil, fmt.Errorf("campaigns: %w", err)
	}
	defer rows.Close()
	var out []store.Campaign
	for rows.Next() {
		c, err := scanCampaign(rows)
		if err != nil {
			return nil, fmt.Errorf("campaigns: %w", err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// UpdateCampaign implements store.Firmware.
func (s *Store) UpdateCampaign(ctx context.Context, c store.Campaign) error {
	id := c.ID
	res, err := s.db.ExecContext(ctx, `UPDATE firmware_campaigns SET state = ?, stage = ?, reason = ?, max_failures = ?, updated_at = ? WHERE id = ?`, c.State, c.Stage, c.Reason, c.MaxFailures, time.Now().UnixMilli(), id)
	if err != nil {
		return fmt.Errorf("update campaign %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("campaign %s: %w", id, store.ErrNotFound)
	}
	return nil
}

// CampaignDevices implements store.Firmware.
func (s *Store) CampaignDevices(ctx context.Context, id string) ([]store.CampaignDevice, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT path, stage, state, reason, updated_at FROM firmware_campaign_devices WHERE campaign_id = ? ORDER BY path`, id)
	if err != nil {
		return nil, fmt.Errorf("campaign %s devices: %w", id, err)
	}
	defer rows.Close()
	var out []store.CampaignDevice
	for rows.Next() {
		d := store.CampaignDevice{Campaign: id}
		var at int64
		if err := rows.Scan(&d.Path, &d.Stage, &d.State, &d.Reason, &at); err != nil {
			return nil, err
		}
		d.Updated = time.UnixMilli(at).UTC()
		out = append(out, d)
	}
	return out, rows.Err()
}

// SetCampaignDevice implements store.Firmware.
func (s *Store) SetCampaignDevice(ctx context.Context, id, path, state, reason string, at time.Time) (bool, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE firmware_campaign_devices SET state = ?, reason = ?, updated_at = ?
		WHERE campaign_id = ? AND path = ? AND state NOT IN ('installed', 'failed')`, state, reason, at.UnixMilli(), id, path)
	if err != nil {
		return false, fmt.Errorf("campaign %s device %s: %w", id, path, err)
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

// PutDeviceMessage implements store.Firmware.
func (s *Store) PutDeviceMessage(ctx context.Context, m store.DeviceMessage) error {
	var exp int64
	if !m.Expires.IsZero() {
		exp = m.Expires.UnixMilli()
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO device_messages (id, kind, gateway, ref, sender, name, at, expires, body, state, ledger_index) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		m.ID, m.Kind, m.Gateway, store.SafeText(m.Ref), store.SafeText(m.Sender), store.SafeText(m.Name), m.At.UnixMilli(), exp, m.Body, m.State, m.LedgerIndex)
	if err != nil {
		if isUnique(err) {
			return fmt.Errorf("device message %s: %w", m.ID, store.ErrExists)
		}
		return fmt.Errorf("device message %s: %w", m.ID, err)
	}
	return nil
}

// DeviceMessages implements store.Firmware.
func (s *Store) DeviceMessages(ctx context.Context, f store.MessageFilter) ([]store.DeviceMessage, error) {
	where, args, err := scopeWhere("gateway", f.Scope)
	if err != nil {
		return nil, err
	}
	for _, c := range []struct{ col, v string }{{"kind", f.Kind}, {"ref", f.Ref}, {"state", f.State}} {
		if c.v != "" {
			where += " AND " + c.col + " = ?"
			args = append(args, c.v)
		}
	}
	limit := f.Limit
	if limit <= 0 {
		limit = 1000
	}
	args = append(args, f.After, limit)
	rows, err := s.db.QueryContext(ctx, `SELECT seq, id, kind, gateway, ref, sender, name, at, expires, body, state, ledger_index FROM device_messages
		WHERE `+where+` AND seq > ? ORDER BY seq LIMIT ?`, args...)
	if err != nil {
		return nil, fmt.Errorf("device messages: %w", err)
	}
	defer rows.Close()
	var out []store.DeviceMessage
	for rows.Next() {
		var m store.DeviceMessage
		var at, exp int64
		if err := rows.Scan(&m.Seq, &m.ID, &m.Kind, &m.Gateway, &m.Ref, &m.Sender, &m.Name, &at, &exp, &m.Body, &m.State, &m.LedgerIndex); err != nil {
			return nil, fmt.Errorf("device messages: %w", err)
		}
		m.At = time.UnixMilli(at).UTC()
		if exp != 0 {
			m.Expires = time.UnixMilli(exp).UTC()
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// SetDeviceMessage implements store.Firmware.
func (s *Store) SetDeviceMessage(ctx context.Context, id, state string, ledgerIndex int64) error {
	res, err := s.db.ExecContext(ctx, `UPDATE device_messages SET state = ?, ledger_index = ? WHERE id = ?`, state, ledgerIndex, id)
	if err != nil {
		return fmt.Errorf("device message %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("device message %s: %w", id, store.ErrNotFound)
	}
	return nil
}
