package postgres

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

const userCols = `id, email, scope, role, handle, created_by, created_at, disabled_at`

func scanUser(r pgx.Row) (store.ConsoleUser, error) {
	var u store.ConsoleUser
	var disabled *time.Time
	if err := r.Scan(&u.ID, &u.Email, &u.Scope, &u.Role, &u.Handle, &u.CreatedBy, &u.CreatedAt, &disabled); err != nil {
		return u, err
	}
	u.CreatedAt, u.DisabledAt = u.CreatedAt.UTC(), fromNull(disabled)
	return u, nil
}

// CreateUser implements store.Console.
func (s *Store) CreateUser(ctx context.Context, u store.ConsoleUser) (store.ConsoleUser, error) {
	u.CreatedAt = seconds(u.CreatedAt)
	err := s.pool.QueryRow(ctx, `INSERT INTO console_users (email, scope, role, handle, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id`,
		u.Email, u.Scope, u.Role, u.Handle, store.SafeText(u.CreatedBy), u.CreatedAt).Scan(&u.ID)
	if err != nil {
		if isUnique(err) {
			return u, fmt.Errorf("user %s: %w", u.Email, store.ErrExists)
		}
		return u, fmt.Errorf("create user %s: %w", u.Email, err)
	}
	return u, nil
}

func (s *Store) userWhere(ctx context.Context, cond string, arg any) (store.ConsoleUser, error) {
	u, err := scanUser(s.pool.QueryRow(ctx, `SELECT `+userCols+` FROM console_users WHERE `+cond, arg))
	if errors.Is(err, pgx.ErrNoRows) {
		return u, fmt.Errorf("user: %w", store.ErrNotFound)
	}
	if err != nil {
		return u, fmt.Errorf("user: %w", err)
	}
	return u, nil
}

// ConsoleUser implements store.Console.
func (s *Store) ConsoleUser(ctx context.Context, id int64) (store.ConsoleUser, error) {
	return s.userWhere(ctx, `id = $1`, id)
}

// ConsoleUserByEmail implements store.Console.
func (s *Store) ConsoleUserByEmail(ctx context.Context, email string) (store.ConsoleUser, error) {
	return s.userWhere(ctx, `email = $1`, email)
}

// ConsoleUsers implements store.Console.
func (s *Store) ConsoleUsers(ctx context.Context, scope string) ([]store.ConsoleUser, error) {
	var q query
	q.add(`SELECT ` + userCols + ` FROM console_users WHERE `)
	if err := q.scope("scope", scope); err != nil {
		return nil, err
	}
	q.add(` ORDER BY email`)
	rows, err := s.pool.Query(ctx, q.b.String(), q.args...)
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
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("disable user %d: %w", id, err)
	}
	defer tx.Rollback(ctx)
	tag, err := tx.Exec(ctx, `UPDATE console_users SET disabled_at = coalesce(disabled_at, $1) WHERE id = $2`, seconds(at), id)
	if err != nil {
		return fmt.Errorf("disable user %d: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("disable user %d: %w", id, store.ErrNotFound)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM console_sessions WHERE user_id = $1`, id); err != nil {
		return fmt.Errorf("end sessions of user %d: %w", id, err)
	}
	return tx.Commit(ctx)
}

// CreateInvitation implements store.Console.
func (s *Store) CreateInvitation(ctx context.Context, inv store.ConsoleInvitation) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO console_invitations (token_hash, user_id, kind, created_by, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)`,
		inv.TokenHash, inv.UserID, inv.Kind, store.SafeText(inv.CreatedBy), seconds(inv.CreatedAt), seconds(inv.ExpiresAt))
	if err != nil {
		return fmt.Errorf("create invitation: %w", err)
	}
	return nil
}

// Invitation implements store.Console.
func (s *Store) Invitation(ctx context.Context, tokenHash []byte) (store.ConsoleInvitation, error) {
	inv := store.ConsoleInvitation{TokenHash: tokenHash}
	var used *time.Time
	err := s.pool.QueryRow(ctx, `SELECT user_id, kind, created_by, created_at, expires_at, used_at FROM console_invitations WHERE token_hash = $1`, tokenHash).
		Scan(&inv.UserID, &inv.Kind, &inv.CreatedBy, &inv.CreatedAt, &inv.ExpiresAt, &used)
	if errors.Is(err, pgx.ErrNoRows) {
		return inv, fmt.Errorf("invitation: %w", store.ErrNotFound)
	}
	if err != nil {
		return inv, fmt.Errorf("invitation: %w", err)
	}
	inv.CreatedAt, inv.ExpiresAt, inv.UsedAt = inv.CreatedAt.UTC(), inv.ExpiresAt.UTC(), fromNull(used)
	return inv, nil
}

// AddCredential implements store.Console.
func (s *Store) AddCredential(ctx context.Context, c store.ConsoleCredential, invitation []byte, at time.Time) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("add credential: %w", err)
	}
	defer tx.Rollback(ctx)
	if invitation != nil {
		tag, err := tx.Exec(ctx, `UPDATE console_invitations SET used_at = $1 WHERE token_hash = $2 AND user_id = $3 AND kind = 'register' AND used_at IS NULL AND expires_at > $1`,
			seconds(at), invitation, c.UserID)
		if err != nil {
			return fmt.Errorf("consume invitation: %w", err)
		}
		if tag.RowsAffected() != 1 {
			return fmt.Errorf("invitation unknown, used or expired: %w", store.ErrNotFound)
		}
	}
	_, err = tx.Exec(ctx, `INSERT INTO console_credentials (id, user_id, kind, name, data, sign_count, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
		c.ID, c.UserID, c.Kind, store.SafeText(c.Name), c.Data, int64(c.SignCount), seconds(at))
	if err != nil {
		if isUnique(err) {
			return fmt.Errorf("credential: %w", store.ErrExists)
		}
		return fmt.Errorf("add credential: %w", err)
	}
	return tx.Commit(ctx)
}

// ConsumeInvitation implements store.Console.
func (s *Store) ConsumeInvitation(ctx context.Context, tokenHash []byte, kind string, at time.Time) (store.ConsoleInvitation, error) {
	tag, err := s.pool.Exec(ctx, `UPDATE console_invitations SET used_at = $1 WHERE token_hash = $2 AND kind = $3 AND used_at IS NULL AND expires_at > $1`,
		seconds(at), tokenHash, kind)
	if err != nil {
		return store.ConsoleInvitation{}, fmt.Errorf("consume invitation: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return store.ConsoleInvitation{}, fmt.Errorf("invitation unknown, used or expired: %w", store.ErrNotFound)
	}
	return s.Invitation(ctx, tokenHash)
}

const credCols = `id, user_id, kind, name, data, sign_count, created_at, last_used_at`

func scanCred(r pgx.Row) (store.ConsoleCredential, error) {
	var c store.ConsoleCredential
	var count int64
	var used *time.Time
	if err := r.Scan(&c.ID, &c.UserID, &c.Kind, &c.Name, &c.Data, &count, &c.CreatedAt, &used); err != nil {
		return c, err
	}
	c.SignCount, c.CreatedAt, c.LastUsedAt = uint32(count), c.CreatedAt.UTC(), fromNull(used)
	return c, nil
}

// Credential implements store.Console.
func (s *Store) Credential(ctx context.Context, id []byte) (store.ConsoleCredential, error) {
	c, err := scanCred(s.pool.QueryRow(ctx, `SELECT `+credCols+` FROM console_credentials WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return c, fmt.Errorf("credential: %w", store.ErrNotFound)
	}
	if err != nil {
		return c, fmt.Errorf("credential: %w", err)
	}
	return c, nil
}

// Credentials implements store.Console.
func (s *Store) Credentials(ctx context.Context, userID int64) ([]store.ConsoleCredential, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+credCols+` FROM console_credentials WHERE user_id = $1 ORDER BY created_at, id`, userID)
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
	tag, err := s.pool.Exec(ctx, `UPDATE console_credentials SET sign_count = $1, data = $2, last_used_at = $3 WHERE id = $4 AND sign_count = $5`,
		int64(count), data, seconds(at), id, int64(old))
	if err != nil {
		return fmt.Errorf("use credential: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("credential changed meanwhile or is gone: %w", store.ErrConflict)
	}
	return nil
}

// DeleteCredential implements store.Console.
func (s *Store) DeleteCredential(ctx context.Context, userID int64, id []byte) error {
	tag, err := s.pool.Exec(ctx, `DELETE FROM console_credentials WHERE user_id = $1 AND id = $2`, userID, id)
	if err != nil {
		return fmt.Errorf("delete credential: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("credential: %w", store.ErrNotFound)
	}
	return nil
}

// CreateSession implements store.Console.
func (s *Store) CreateSession(ctx context.Context, se store.ConsoleSession) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO console_sessions (token_hash, user_id, csrf, method, remote, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
		se.TokenHash, se.UserID, se.CSRF, se.Method, store.SafeText(se.Remote), seconds(se.CreatedAt), seconds(se.ExpiresAt))
	if err != nil {
		return fmt.Errorf("create session: %w", err)
	}
	return nil
}

// Session implements store.Console.
func (s *Store) Session(ctx context.Context, tokenHash []byte, now time.Time) (store.ConsoleSession, store.ConsoleUser, error) {
	se := store.ConsoleSession{TokenHash: tokenHash}
	var u store.ConsoleUser
	err := s.pool.QueryRow(ctx, `SELECT s.csrf, s.method, s.remote, s.created_at, s.expires_at,
			u.id, u.email, u.scope, u.role, u.handle, u.created_by, u.created_at
		FROM console_sessions s JOIN console_users u ON u.id = s.user_id
		WHERE s.token_hash = $1 AND s.expires_at > $2 AND u.disabled_at IS NULL`, tokenHash, seconds(now)).
		Scan(&se.CSRF, &se.Method, &se.Remote, &se.CreatedAt, &se.ExpiresAt, &u.ID, &u.Email, &u.Scope, &u.Role, &u.Handle, &u.CreatedBy, &u.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return se, u, fmt.Errorf("session: %w", store.ErrNotFound)
	}
	if err != nil {
		return se, u, fmt.Errorf("session: %w", err)
	}
	se.UserID = u.ID
	se.CreatedAt, se.ExpiresAt, u.CreatedAt = se.CreatedAt.UTC(), se.ExpiresAt.UTC(), u.CreatedAt.UTC()
	return se, u, nil
}

// DeleteSession implements store.Console.
func (s *Store) DeleteSession(ctx context.Context, tokenHash []byte) error {
	if _, err := s.pool.Exec(ctx, `DELETE FROM console_sessions WHERE token_hash = $1`, tokenHash); err != nil {
		return fmt.Errorf("delete session: %w", err)
	}
	return nil
}

// DeleteSessions implements store.Console.
func (s *Store) DeleteSessions(ctx context.Context, userID int64) (int, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM console_sessions WHERE user_id = $1`, userID)
	if err != nil {
		return 0, fmt.Errorf("delete sessions of user %d: %w", userID, err)
	}
	return int(tag.RowsAffected()), nil
}

// SessionCount implements store.Console.
func (s *Store) SessionCount(ctx context.Context, userID int64, now time.Time) (int, error) {
	var n int
	err := s.pool.QueryRow(ctx, `SELECT count(*) FROM console_sessions WHERE user_id = $1 AND expires_at > $2`, userID, seconds(now)).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count sessions: %w", err)
	}
	return n, nil
}

// AppendAudit implements store.Console.
func (s *Store) AppendAudit(ctx context.Context, e store.AuditEntry) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO console_audit (at, actor, scope, action, target, detail, remote, ok) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		seconds(e.At), store.SafeText(e.Actor), e.Scope, store.SafeText(e.Action), store.SafeText(e.Target), store.SafeText(e.Detail), store.SafeText(e.Remote), e.OK)
	if err != nil {
		return fmt.Errorf("audit %s: %w", e.Action, err)
	}
	return nil
}

// AuditLog implements store.Console.
func (s *Store) AuditLog(ctx context.Context, scope string, before int64, limit int) ([]store.AuditEntry, error) {
	var q query
	q.add(`SELECT id, at, actor, scope, action, target, detail, remote, ok FROM console_audit WHERE `)
	if err := q.scope("scope", scope); err != nil {
		return nil, err
	}
	if before > 0 {
		q.add(" AND id < ", q.arg(before))
	}
	q.add(" ORDER BY id DESC LIMIT ", q.arg(store.EffectiveLimit(limit)))
	rows, err := s.pool.Query(ctx, q.b.String(), q.args...)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	defer rows.Close()
	var out []store.AuditEntry
	for rows.Next() {
		var e store.AuditEntry
		if err := rows.Scan(&e.ID, &e.At, &e.Actor, &e.Scope, &e.Action, &e.Target, &e.Detail, &e.Remote, &e.OK); err != nil {
			return nil, fmt.Errorf("audit log: %w", err)
		}
		e.At = e.At.UTC()
		out = append(out, e)
	}
	return out, rows.Err()
}

// TreeHeads implements store.Console.
func (s *Store) TreeHeads(ctx context.Context, before uint64, limit int) ([]store.TreeHead, error) {
	var q query
	q.add(`SELECT size, root, checkpoint, signature, cert_chain FROM tree_heads`)
	if before > 0 {
		q.add(` WHERE size < `, q.arg(int64(before)))
	}
	q.add(` ORDER BY size DESC LIMIT `, q.arg(store.EffectiveLimit(limit)))
	rows, err := s.pool.Query(ctx, q.b.String(), q.args...)
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
	var q query
	q.add(`SELECT `, snapshotColumns, ` FROM snapshots s JOIN devices d ON d.id = s.device_id WHERE s.ledger_index >= `, q.arg(int64(min(from, math.MaxInt64))), ` AND `)
	if err := q.scope("d.gateway", scope); err != nil {
		return nil, err
	}
	q.add(` ORDER BY s.ledger_index LIMIT `, q.arg(store.EffectiveLimit(limit)))
	recs, err := s.readSnapshots(ctx, &q, nil)
	if err != nil {
		return nil, fmt.Errorf("snapshots since %d: %w", from, err)
	}
	return recs, nil
}

// ChannelSeries implements store.Series: the database picks the channel's
// values out of the arrays.
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
	rows, err := s.pool.Query(ctx, `SELECT s.time, v.value FROM devices d JOIN snapshots s ON s.device_id = d.id,
			unnest(s.channel_ids, s.vals) AS v (channel_id, value)
		WHERE d.gateway = $1 AND d.device = $2 AND s.time >= $3 AND s.time < $4 AND v.channel_id = ANY($5)
		ORDER BY s.time, s.seq`, q.Gateway, q.Device, millis(q.From), millis(q.To), chIDs)
	if err != nil {
		return 0, fmt.Errorf("channel series: %w", err)
	}
	defer rows.Close()
	n := 0
	var t time.Time
	var v float64
	for rows.Next() {
		if err := rows.Scan(&t, &v); err != nil {
			return n, fmt.Errorf("channel series: %w", err)
		}
		each(t.UTC(), v)
		n++
	}
	return n, rows.Err()
}
