package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

func unixOrNull(v sql.NullInt64) time.Time {
	if !v.Valid {
		return time.Time{}
	}
	return time.Unix(v.Int64, 0).UTC()
}

const userCols = `id, email, scope, role, handle, created_by, created_at, disabled_at`

func scanUser(r scanner) (store.ConsoleUser, error) {
	var u store.ConsoleUser
	var created int64
	var disabled sql.NullInt64
	if err := r.Scan(&u.ID, &u.Email, &u.Scope, &u.Role, &u.Handle, &u.CreatedBy, &created, &disabled); err != nil {
		return u, err
	}
	u.CreatedAt, u.DisabledAt = time.Unix(created, 0).UTC(), unixOrNull(disabled)
	return u, nil
}

// CreateUser implements store.Console.
func (s *Store) CreateUser(ctx context.Context, u store.ConsoleUser) (store.ConsoleUser, error) {
	res, err := s.db.ExecContext(ctx, `INSERT INTO console_users (email, scope, role, handle, created_by, created_at) VALUES (?, ?, ?, ?, ?, ?)`,
		u.Email, u.Scope, u.Role, u.Handle, store.SafeText(u.CreatedBy), u.CreatedAt.Unix())
	if err != nil {
		if isUnique(err) {
			return u, fmt.Errorf("user %s: %w", u.Email, store.ErrExists)
		}
		return u, fmt.Errorf("create user %s: %w", u.Email, err)
	}
	u.ID, err = res.LastInsertId()
	u.CreatedAt = time.Unix(u.CreatedAt.Unix(), 0).UTC()
	return u, err
}

func (s *Store) userWhere(ctx context.Context, cond string, arg any) (store.ConsoleUser, error) {
	u, err := scanUser(s.db.QueryRowContext(ctx, `SELECT `+userCols+` FROM console_users WHERE `+cond, arg))
	if errors.Is(err, sql.ErrNoRows) {
		return u, fmt.Errorf("user: %w", store.ErrNotFound)
	}
	if err != nil {
		return u, fmt.Errorf("user: %w", err)
	}
	return u, nil
}

// ConsoleUser implements store.Console.
func (s *Store) ConsoleUser(ctx context.Context, id int64) (store.ConsoleUser, error) {
	return s.userWhere(ctx, `id = ?`, id)
}

// ConsoleUserByEmail implements store.Console.
func (s *Store) ConsoleUserByEmail(ctx context.Context, email string) (store.ConsoleUser, error) {
	return s.userWhere(ctx, `email = ?`, email)
}

// ConsoleUsers implements store.Console.
func (s *Store) ConsoleUsers(ctx context.Context, scope string) ([]store.ConsoleUser, error) {
	where, args, err := scopeWhere("scope", scope)
	if err != nil {
		return nil, err
	}
	rows, err := s.db.QueryContext(ctx, `SELECT `+userCols+` FROM console_users WHERE `+where+` ORDER BY email`, args...)
	if err != nil {
		return nil, fmt.Errorf("users: %w", err)
	}
	defer rows.Close()
	var out []store.ConsoleUser
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			return nil, fmt.Errorf("users: %w", err)
		}
		out = append(out, u)
	}
	return out, rows.Err()
}

// DisableUser implements store.Console.
func (s *Store) DisableUser(ctx context.Context, id int64, at time.Time) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("disable user %d: %w", id, err)
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `UPDATE console_users SET disabled_at = coalesce(disabled_at, ?) WHERE id = ?`, at.Unix(), id)
	if err != nil {
		return fmt.Errorf("disable user %d: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("disable user %d: %w", id, store.ErrNotFound)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM console_sessions WHERE user_id = ?`, id); err != nil {
		return fmt.Errorf("end sessions of user %d: %w", id, err)
	}
	return tx.Commit()
}

// CreateInvitation implements store.Console.
func (s *Store) CreateInvitation(ctx context.Context, inv store.ConsoleInvitation) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO console_invitations (token_hash, user_id, kind, created_by, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)`,
		inv.TokenHash, inv.UserID, inv.Kind, store.SafeText(inv.CreatedBy), inv.CreatedAt.Unix(), inv.ExpiresAt.Unix())
	if err != nil {
		return fmt.Errorf("create invitation: %w", err)
	}
	return nil
}

// Invitation implements store.Console.
func (s *Store) Invitation(ctx context.Context, tokenHash []byte) (store.ConsoleInvitation, error) {
	inv := store.ConsoleInvitation{TokenHash: tokenHash}
	var created, expires int64
	var used sql.NullInt64
	err := s.db.QueryRowContext(ctx, `SELECT user_id, kind, created_by, created_at, expires_at, used_at FROM console_invitations WHERE token_hash = ?`, tokenHash).
		Scan(&inv.UserID, &inv.Kind, &inv.CreatedBy, &created, &expires, &used)
	if errors.Is(err, sql.ErrNoRows) {
		return inv, fmt.Errorf("invitation: %w", store.ErrNotFound)
	}
	if err != nil {
		return inv, fmt.Errorf("invitation: %w", err)
	}
	inv.CreatedAt, inv.ExpiresAt, inv.UsedAt = time.Unix(created, 0).UTC(), time.Unix(expires, 0).UTC(), unixOrNull(used)
	return inv, nil
}

// AddCredential implements store.Console.
func (s *Store) AddCredential(ctx context.Context, c store.ConsoleCredential, invitation []byte, at time.Time) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("add credential: %w", err)
	}
	defer tx.Rollback()
	if invitation != nil {
		res, err := tx.ExecContext(ctx, `UPDATE console_invitations SET used_at = ? WHERE token_hash = ? AND user_id = ? AND kind = 'register' AND used_at IS NULL AND expires_at > ?`,
			at.Unix(), invitation, c.UserID, at.Unix())
		if err != nil {
			return fmt.Errorf("consume invitation: %w", err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("invitation unknown, used or expired: %w", store.ErrNotFound)
		}
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO console_credentials (id, user_id, kind, name, data, sign_count, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		c.ID, c.UserID, c.Kind, store.SafeText(c.Name), c.Data, int64(c.SignCount), at.Unix())
	if err != nil {
		if isUnique(err) {
			return fmt.Errorf("credential: %w", store.ErrExists)
		}
		return fmt.Errorf("add credential: %w", err)
	}
	return tx.Commit()
}

// ConsumeInvitation implements store.Console.
func (s *Store) ConsumeInvitation(ctx context.Context, tokenHash []byte, kind string, at time.Time) (store.ConsoleInvitation, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE console_invitations SET used_at = ? WHERE token_hash = ? AND kind = ? AND used_at IS NULL AND expires_at > ?`,
		at.Unix(), tokenHash, kind, at.Unix())
	if err != nil {
		return store.ConsoleInvitation{}, fmt.Errorf("consume invitation: %w", err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return store.ConsoleInvitation{}, fmt.Errorf("invitation unknown, used or expired: %w", store.ErrNotFound)
	}
	return s.Invitation(ctx, tokenHash)
}

const credCols = `id, user_id, kind, name, data, sign_count, created_at, last_used_at`

func scanCred(r scanner) (store.ConsoleCredential, error) {
	var c store.ConsoleCredential
	var count, created int64
	var used sql.NullInt64
	if err := r.Scan(&c.ID, &c.UserID, &c.Kind, &c.Name, &c.Data, &count, &created, &used); err != nil {
		return c, err
	}
	c.SignCount, c.CreatedAt, c.LastUsedAt = uint32(count), time.Unix(created, 0).UTC(), unixOrNull(used)
	return c, nil
}

// Credential implements store.Console.
func (s *Store) Credential(ctx context.Context, id []byte) (store.ConsoleCredential, error) {
	c, err := scanCred(s.db.QueryRowContext(ctx, `SELECT `+credCols+` FROM console_credentials WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return c, fmt.Errorf("credential: %w", store.ErrNotFound)
	}
	if err != nil {
		return c, fmt.Errorf("credential: %w", err)
	}
	return c, nil
}

// Credentials implements store.Console.
func (s *Store) Credentials(ctx context.Context, userID int64) ([]store.ConsoleCredential, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+credCols+` FROM console_credentials WHERE user_id = ? ORDER BY created_at, id`, userID)
	if err != nil {
		return nil, fmt.Errorf("credentials: %w", err)
	}
	defer rows.Close()
	var out []store.ConsoleCredential
	for rows.Next() {
		c, err := scanCred(rows)
		if err != nil {
			return nil, fmt.Errorf("credentials: %w", err)
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// UseCredential implements store.Console.
func (s *Store) UseCredential(ctx context.Context, id []byte, old, count uint32, data []byte, at time.Time) error {
	res, err := s.db.ExecContext(ctx, `UPDATE console_credentials SET sign_count = ?, data = ?, last_used_at = ? WHERE id = ? AND sign_count = ?`,
		int64(count), data, at.Unix(), id, int64(old))
	if err != nil {
		return fmt.Errorf("use credential: %w", err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return fmt.Errorf("credential changed meanwhile or is gone: %w", store.ErrConflict)
	}
	return nil
}

// DeleteCredential implements store.Console.
func (s *Store) DeleteCredential(ctx context.Context, userID int64, id []byte) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM console_credentials WHERE user_id = ? AND id = ?`, userID, id)
	if err != nil {
		return fmt.Errorf("delete credential: %w", err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return fmt.Errorf("credential: %w", store.ErrNotFound)
	}
	return nil
}

// CreateSession implements store.Console.
func (s *Store) CreateSession(ctx context.Context, se store.ConsoleSession) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO console_sessions (token_hash, user_id, csrf, method, remote, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		se.TokenHash, se.UserID, se.CSRF, se.Method, store.SafeText(se.Remote), se.CreatedAt.Unix(), se.ExpiresAt.Unix())
	if err != nil {
		return fmt.Errorf("create session: %w", err)
	}
	return nil
}

// Session implements store.Console.
func (s *Store) Session(ctx context.Context, tokenHash []byte, now time.Time) (store.ConsoleSession, store.ConsoleUser, error) {
	se := store.ConsoleSession{TokenHash: tokenHash}
	var u store.ConsoleUser
	var created, expires, ucreated int64
	err := s.db.QueryRowContext(ctx, `SELECT s.csrf, s.method, s.remote, s.created_at, s.expires_at,
			u.id, u.email, u.scope, u.role, u.handle, u.created_by, u.created_at
		FROM console_sessions s JOIN console_users u ON u.id = s.user_id
		WHERE s.token_hash = ? AND s.expires_at > ? AND u.disabled_at IS NULL`, tokenHash, now.Unix()).
		Scan(&se.CSRF, &se.Method, &se.Remote, &created, &expires, &u.ID, &u.Email, &u.Scope, &u.Role, &u.Handle, &u.CreatedBy, &ucreated)
	if errors.Is(err, sql.ErrNoRows) {
		return se, u, fmt.Errorf("session: %w", store.ErrNotFound)
	}
	if err != nil {
		return se, u, fmt.Errorf("session: %w", err)
	}
	se.UserID = u.ID
	se.CreatedAt, se.ExpiresAt, u.CreatedAt = time.Unix(created, 0).UTC(), time.Unix(expires, 0).UTC(), time.Unix(ucreated, 0).UTC()
	return se, u, nil
}

// DeleteSession implements store.Console.
func (s *Store) DeleteSession(ctx context.Context, tokenHash []byte) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM console_sessions WHERE token_hash = ?`, tokenHash); err != nil {
		return fmt.Errorf("delete session: %w", err)
	}
	return nil
}

// DeleteSessions implements store.Console.
func (s *Store) DeleteSessions(ctx context.Context, userID int64) (int, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM console_sessions WHERE user_id = ?`, userID)
	if err != nil {
		return 0, fmt.Errorf("delete sessions of user %d: %w", userID, err)
	}
	n, _ := res.RowsAffected()
	return int(n), nil
}

// SessionCount implements store.Console.
func (s *Store) SessionCount(ctx context.Context, userID int64, now time.Time) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM console_sessions WHERE user_id = ? AND expires_at > ?`, userID, now.Unix()).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count sessions: %w", err)
	}
	return n, nil
}

// AppendAudit implements store.Console.
func (s *Store) AppendAudit(ctx context.Context, e store.AuditEntry) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO console_audit (at, actor, scope, action, target, detail, remote, ok) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
		e.At.Unix(), store.SafeText(e.Actor), e.Scope, store.SafeText(e.Action), store.SafeText(e.Target), store.SafeText(e.Detail), store.SafeText(e.Remote), e.OK)
	if err != nil {
		return fmt.Errorf("audit %s: %w", e.Action, err)
	}
	return nil
}

// AuditLog implements store.Console.
func (s *Store) AuditLog(ctx context.Context, scope string, before int64, limit int) ([]store.AuditEntry, error) {
	where, args, err := scopeWhere("scope", scope)
	if err != nil {
		return nil, err
	}
	if before > 0 {
		where += " AND id < ?"
		args = append(args, before)
	}
	args = append(args, store.EffectiveLimit(limit))
	rows, err := s.db.QueryContext(ctx, `SELECT id, at, actor, scope, action, target, detail, remote, ok FROM console_audit WHERE `+where+` ORDER BY id DESC LIMIT ?`, args...)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	defer rows.Close()
	var out []store.AuditEntry
	for rows.Next() {
		var e store.AuditEntry
		var at int64
		if err := rows.Scan(&e.ID, &at, &e.Actor, &e.Scope, &e.Action, &e.Target, &e.Detail, &e.Remote, &e.OK); err != nil {
			return nil, fmt.Errorf("audit log: %w", err)
		}
		e.At = time.Unix(at, 0).UTC()
		out = append(out, e)
	}
	return out, rows.Err()
}

// TreeHeads implements store.Console.
func (s *Store) TreeHeads(ctx context.Context, before uint64, limit int) ([]store.TreeHead, error) {
	q, args := `SELECT size, root, checkpoint, signature, cert_chain FROM tree_heads`, []any{}
	if before > 0 {
		q += ` WHERE size < ?`
		args = append(args, int64(before))
	}
	args = append(args, store.EffectiveLimit(limit))
	rows, err := s.db.QueryContext(ctx, q+` ORDER BY size DESC LIMIT ?`, args...)
	if err != nil {
		return nil, fmt.Errorf("tree heads: %w", err)
	}
	defer rows.Close()
	var out []store.TreeHead
	for rows.Next() {
		var th store.TreeHead
		var size int64
		if err := rows.Scan(&size, &th.Root, &th.Checkpoint, &th.Signature, &th.CertChain); err != nil {
			return nil, fmt.Errorf("tree heads: %w", err)
		}
		th.Size = uint64(size)
		out = append(out, th)
	}
	return out, rows.Err()
}

// SnapshotsSince implements store.Live.
func (s *Store) SnapshotsSince(ctx context.Context, scope string, from uint64, limit int) ([]store.SnapshotRecord, error) {
	where, args, err := scopeWhere("d.gateway", scope)
	if err != nil {
		return nil, err
	}
	args = append([]any{int64(min(from, math.MaxInt64))}, args...)
	rows, err := s.db.QueryContext(ctx, `SELECT `+snapshotColumns+` FROM snapshots s JOIN devices d ON d.id = s.device_id
		WHERE s.ledger_index >= ? AND `+where+` ORDER BY s.ledger_index LIMIT ?`, append(args, store.EffectiveLimit(limit))...)
	if err != nil {
		return nil, fmt.Errorf("snapshots since %d: %w", from, err)
	}
	recs, raw, err := s.scanSnapshots(rows)
	if err != nil {
		return nil, fmt.Errorf("snapshots since %d: %w", from, err)
	}
	return s.fillValues(ctx, recs, raw, nil)
}

// ChannelSeries implements store.Series.
func (s *Store) ChannelSeries(ctx context.Context, q store.SeriesQuery, each func(t time.Time, v float64)) (int, error) {
	if _, _, err := store.ScopeRange(q.Scope); err != nil {
		return 0, err
	}
	if !store.InScope(q.Scope, q.Gateway) {
		return 0, nil
	}
	chIDs, err := s.channelIDs(ctx, []string{q.Channel})
	if err != nil || len(chIDs) == 0 {
		return 0, err
	}
	var devID int64
	err = s.db.QueryRowContext(ctx, `SELECT id FROM devices WHERE gateway = ? AND device = ?`, q.Gateway, q.Device).Scan(&devID)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("channel series: %w", err)
	}
	rows, err := s.db.QueryContext(ctx, `SELECT time, vals FROM snapshots WHERE device_id = ? AND time >= ? AND time < ? ORDER BY time, seq`,
		devID, q.From.UnixMilli(), q.To.UnixMilli())
	if err != nil {
		return 0, fmt.Errorf("channel series: %w", err)
	}
	defer rows.Close()
	n := 0
	var ms int64
	var vals sql.RawBytes
	for rows.Next() {
		if err := rows.Scan(&ms, &vals); err != nil {
			return n, fmt.Errorf("channel series: %w", err)
		}
		t := time.UnixMilli(ms).UTC()
		if err := decodeValues(vals, func(ch int64, v float64) {
			if slices.Contains(chIDs, ch) {
				each(t, v)
				n++
			}
		}); err != nil {
			return n, fmt.Errorf("channel series: %w", err)
		}
	}
	return n, rows.Err()
}
