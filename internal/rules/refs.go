package rules

import (
	"fmt"

	"cel.dev/cel-go/cel"
	celast "cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/cost"
	"cel.dev/cel-go/common/operators"
	"cel.dev/cel-go/common/types"

	"github.com/fieldtrust/fieldtrust/internal/snapshot"
)

// channelRefs finds the channels a condition reads of values and prev:
// values.x, has(values.x), values["x"] and "x" in values. Any other use of
// the maps (size(values), a comprehension over them) means all channels.
// The engine then builds, per snapshot, a map of only the channels its
// rules read: most of a snapshot's 340 values are never looked at.
func channelRefs(a *cel.Ast) (chans map[string]bool, all bool) {
	chans = map[string]bool{}
	consumed := map[int64]bool{}
	isMap := func(e celast.Expr) bool {
		if e.Kind() != celast.IdentKind {
			return false
		}
		n := e.AsIdent()
		return n == "values" || n == "prev"
	}
	constString := func(e celast.Expr) (string, bool) {
		if e.Kind() != celast.LiteralKind {
			return "", false
		}
		s, ok := e.AsLiteral().(types.String)
		return string(s), ok
	}
	root := a.NativeRep().Expr()
	celast.PreOrderVisit(root, celast.NewExprVisitor(func(e celast.Expr) {
		switch e.Kind() {
		case celast.SelectKind:
			if s := e.AsSelect(); isMap(s.Operand()) {
				chans[s.FieldName()] = true
				consumed[s.Operand().ID()] = true
			}
		case celast.CallKind:
			c := e.AsCall()
			args := c.Args()
			switch c.FunctionName() {
			case operators.Index, operators.OptIndex:
				if len(args) == 2 && isMap(args[0]) {
					if k, ok := constString(args[1]); ok {
						chans[k] = true
						consumed[args[0].ID()] = true
					}
				}
			case operators.In:
				if len(args) == 2 && isMap(args[1]) {
					if k, ok := constString(args[0]); ok {
						chans[k] = true
						consumed[args[1].ID()] = true
					}
				}
			}
		}
	}))
	celast.PreOrderVisit(root, celast.NewExprVisitor(func(e celast.Expr) {
		if isMap(e) && !consumed[e.ID()] {
			all = true
		}
	}))
	return chans, all
}

// MaxCost bounds the estimated worst-case cost of a condition (cel-go's
// cost units, about one per operation and per element visited), for a
// snapshot of snapshot.MaxValues channels: a rule that could make the
// platform loop over every pair of channels is refused when it is added,
// not discovered at run time.
const MaxCost = 100_000

// sizes tells cel-go's cost estimator how large the variables can be.
type sizes struct{}

func (sizes) EstimateSize(n cost.AstNode) *cost.SizeEstimate {
	if p := n.Path(); len(p) == 1 {
		switch p[0] {
		case "values", "prev":
			return &cost.SizeEstimate{Min: 0, Max: snapshot.MaxValues}
		case "calibration":
			return &cost.SizeEstimate{Min: 0, Max: 8}
		case "device", "gateway", "type":
			return &cost.SizeEstimate{Min: 0, Max: 4 * 65}
		}
	}
	if p := n.Path(); len(p) == 2 && (p[0] == "values" || p[0] == "prev") && p[1] == "@keys" {
		return &cost.SizeEstimate{Min: 1, Max: 64}
	}
	return nil
}

func (sizes) EstimateCallCost(string, string, *cost.AstNode, []cost.AstNode) *cost.CallEstimate {
	return nil
}

// checkCost refuses a condition whose worst case costs more than MaxCost.
func checkCost(en *cel.Env, a *cel.Ast) error {
	est, err := en.EstimateCost(a, sizes{})
	if err != nil {
		return err
	}
	if est.Max > MaxCost {
		return fmt.Errorf("the condition may cost up to %d operations per snapshot (at most %d): avoid nested loops over values", est.Max, MaxCost)
	}
	return nil
}
