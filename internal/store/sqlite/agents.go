package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/store"
)

const agentColumns = `client_id, path, tenant, profile, created_at, revoked_at, iat_id, iat_expires,
	generation, expires_at, secret_sealed, jwks, rat_hash, prev_rat_hash, prev_rat_until, used,
	config, config_etag, mappings, version`

// ms is t as Unix milliseconds, 0 for the zero time.
func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

// fromMS is the inverse of ms.
func fromMS(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMilli(v).UTC()
}

func agentArgs(a store.Agent) []any {
	return []any{a.ClientID, a.Path, a.Tenant, a.Profile, ms(a.Created), ms(a.Revoked), a.IATID, ms(a.IATExpires),
		a.Generation, ms(a.Expires), a.SecretSealed, a.JWKS, a.RATHash, a.PrevRATHash, ms(a.PrevRATUntil), a.Used,
		a.Config, a.ConfigETag, a.Mappings}
}

func scanAgent(row interface{ Scan(...any) error }) (store.Agent, error) {
	var a store.Agent
	var created, revoked, iatExp, exp, prevUntil int64
	err := row.Scan(&a.ClientID, &a.Path, &a.Tenant, &a.Profile, &created, &revoked, &a.IATID, &iatExp,
		&a.Generation, &exp, &a.SecretSealed, &a.JWKS, &a.RATHash, &a.PrevRATHash, &prevUntil, &a.Used,
		&a.Config, &a.ConfigETag, &a.Mappings, &a.Version)
	a.Created, a.Revoked, a.IATExpires, a.Expires, a.PrevRATUntil = fromMS(created), fromMS(revoked), fromMS(iatExp), fromMS(exp), fromMS(prevUntil)
	return a, err
}

// CreateAgent implements store.Agents.
func (s *Store) CreateAgent(ctx context.Context, a store.Agent) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO agents (`+agentColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)`, agentArgs(a)...)
	if err != nil {
		if isUnique(err) {
			return fmt.Errorf("agent %s (%s): %w", a.Path, a.ClientID, store.ErrExists)
		}
		return fmt.Errorf("create agent %s: %w", a.Path, err)
	}
	return nil
}

func (s *Store) agentWhere(ctx context.Context, what, where string, arg any) (store.Agent, error) {
	a, err := scanAgent(s.db.QueryRowContext(ctx, `SELECT `+agentColumns+` FROM agents WHERE `+where, arg))
	if errors.Is(err, sql.ErrNoRows) {
		return a, fmt.Errorf("agent %s: %w", what, store.ErrNotFound)
	}
	if err != nil {
		return a, fmt.Errorf("agent %s: %w", what, err)
	}
	return a, nil
}

// Agent implements store.Agents.
func (s *Store) Agent(ctx context.Context, clientID string) (store.Agent, error) {
	return s.agentWhere(ctx, clientID, `client_id = ?`, clientID)
}

// AgentByPath implements store.Agents.
func (s *Store) AgentByPath(ctx context.Context, path string) (store.Agent, error) {
	return s.agentWhere(ctx, path, `path = ?`, path)
}

// ListAgents implements store.Agents.
func (s *Store) ListAgents(ctx context.Context, scope string) ([]store.Agent, error) {
	lo, hi, err := store.ScopeRange(scope)
	if err != nil {
		return nil, err
	}
	q, args := `SELECT `+agentColumns+` FROM agents`, []any{}
	if scope != "" {
		q += ` WHERE path = ? OR (path >= ? AND path < ?)`
		args = append(args, scope, lo, hi)
	}
	rows, err := s.db.QueryContext(ctx, q+` ORDER BY path`, args...)
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	defer rows.Close()
	var out []store.Agent
	for rows.Next() {
		a, err := scanAgent(rows)
		if err != nil {
			return nil, fmt.Errorf("list agents: %w", err)
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// UpdateAgent implements store.Agents.
func (s *Store) UpdateAgent(ctx context.Context, a store.Agent) (int64, error) {
	args := agentArgs(a)[1:] // client id last, in the WHERE
	args = append(args, a.ClientID, a.Version)
	res, err := s.db.ExecContext(ctx, `UPDATE agents SET path = ?, tenant = ?, profile = ?, created_at = ?, revoked_at = ?,
		iat_id = ?, iat_expires = ?, generation = ?, expires_at = ?, secret_sealed = ?, jwks = ?, rat_hash = ?,
		prev_rat_hash = ?, prev_rat_until = ?, used = ?, config = ?, config_etag = ?, mappings = ?, version = version + 1
		WHERE client_id = ? AND version = ?`, args...)
	if err != nil {
		return 0, fmt.Errorf("update agent %s: %w", a.Path, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return 0, fmt.Errorf("update agent %s: %w", a.Path, err)
	} else if n == 0 {
		if _, err := s.Agent(ctx, a.ClientID); err != nil {
			return 0, err
		}
		return 0, fmt.Errorf("agent %s: %w", a.Path, store.ErrStale)
	}
	return a.Version + 1, nil
}

// UseAgentAssertion implements store.Agents.
func (s *Store) UseAgentAssertion(ctx context.Context, clientID, jti string, expires, now time.Time) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("record assertion: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `DELETE FROM agent_assertions WHERE expires_at < ?`, now.UnixMilli()); err != nil {
		return fmt.Errorf("record assertion: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO agent_assertions (client_id, jti, expires_at) VALUES (?, ?, ?)`,
		clientID, jti, expires.UnixMilli()); err != nil {
		if isUnique(err) {
			return fmt.Errorf("assertion %s of %s: %w", jti, clientID, store.ErrExists)
		}
		return fmt.Errorf("record assertion: %w", err)
	}
	return tx.Commit()
}
