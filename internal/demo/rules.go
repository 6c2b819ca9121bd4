package demo

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"time"

	"github.com/fieldtrust/fieldtrust/internal/rules"
	"github.com/fieldtrust/fieldtrust/internal/store"
)

//go:embed rules/*.yaml
var ruleFiles embed.FS

// RuleStore is what installing the demo's rules needs.
type RuleStore interface {
	rules.RuleStore
	ListRules(ctx context.Context, scope string) ([]store.Rule, error)
}

// InstallRules adds the demo's rules (the thesis's workflow on the demo
// fleet: a normal report, an abnormal compressor, an overdue pump, a
// silent gateway) unless a rule of that name exists; it returns the names
// of the rules.
func InstallRules(ctx context.Context, st RuleStore) ([]string, error) {
	have := map[string]bool{}
	list, err := st.ListRules(ctx, "")
	if err != nil {
		return nil, err
	}
	for _, r := range list {
		have[r.Name] = true
	}
	names, _ := fs.Glob(ruleFiles, "rules/*.yaml")
	var out []string
	for _, name := range names {
		data, _ := ruleFiles.ReadFile(name)
		r, err := rules.Load(name, data)
		if err != nil {
			return nil, fmt.Errorf("demo rule: %w", err)
		}
		out = append(out, r.Name)
		if have[r.Name] {
			continue
		}
		if _, err := rules.Add(ctx, st, rules.Author{Vendor: true, Path: "demo"}, name, data, time.Now()); err != nil {
			return nil, fmt.Errorf("demo rule: %w", err)
		}
	}
	return out, nil
}
