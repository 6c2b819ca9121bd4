package rules

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
)

// Limits of CEL conditions: what one rule may cost the platform per
// snapshot.
const (
	// MaxExprSize bounds the text of a condition.
	MaxExprSize = 2048
)

var (
	envOnce sync.Once
	env     *cel.Env
	envErr  error
)

// celEnv is the one CEL environment of rules: the variables every
// condition sees.
func celEnv() (*cel.Env, error) {
	envOnce.Do(func() {
		env, envErr = cel.NewEnv(
			cel.Variable("values", cel.MapType(cel.StringType, cel.DoubleType)),
			cel.Variable("prev", cel.MapType(cel.StringType, cel.DoubleType)),
			cel.Variable("device", cel.StringType),
			cel.Variable("gateway", cel.StringType),
			cel.Variable("type", cel.StringType),
			cel.Variable("at", cel.TimestampType),
			cel.Variable("calibration", cel.MapType(cel.StringType, cel.DynType)),
			cel.CrossTypeNumericComparisons(true),
			cel.ParserExpressionSizeLimit(MaxExprSize),
			cel.ParserRecursionLimit(50),
		)
	})
	return env, envErr
}

// Condition is a compiled CEL condition.
type Condition struct {
	Src   string
	prg   cel.Program
	prev  bool // refers to prev
	calib bool // refers to calibration
	// chans are the channels it reads; allChans: it may read any.
	chans    map[string]bool
	allChans bool
}

// compile compiles e to a boolean program; errors name the file position.
func (p *pos) compile(e Expr, what string) (*Condition, error) {
	en, err := celEnv()
	if err != nil {
		return nil, fmt.Errorf("rules: CEL environment: %w", err)
	}
	ast, iss := en.Compile(e.Src)
	if iss != nil && iss.Err() != nil {
		first := iss.Errors()[0]
		line, col := e.pos.line, e.pos.col
		if l := first.Location.Line(); l > 1 {
			line += l - 1
			if !e.pos.block {
				col = 1
			}
		}
		col += first.Location.Column()
		return nil, &Error{File: p.file, Line: line, Col: col, Msg: fmt.Sprintf("%s: %s", what, first.Message)}
	}
	// A dyn result (a field of calibration, a map of mixed types) is
	// checked when it runs: not true or false is a rule error (Eval).
	if out := ast.OutputType(); !out.IsExactType(types.BoolType) && !out.IsExactType(types.DynType) {
		return nil, &Error{File: p.file, Line: e.pos.line, Col: e.pos.col,
			Msg: fmt.Sprintf("%s: the condition is of type %s; it must be true or false (e.g. values.temperature > 90.0)", what, ast.OutputType())}
	}
	if err := checkCost(en, ast); err != nil {
		return nil, &Error{File: p.file, Line: e.pos.line, Col: e.pos.col, Msg: fmt.Sprintf("%s: %v", what, err)}
	}
	prg, err := en.Program(ast, cel.EvalOptions(cel.OptOptimize))
	if err != nil {
		return nil, &Error{File: p.file, Line: e.pos.line, Col: e.pos.col, Msg: fmt.Sprintf("%s: %v", what, err)}
	}
	c := &Condition{Src: e.Src, prg: prg}
	for _, r := range ast.NativeRep().ReferenceMap() {
		switch r.Name {
		case "prev":
			c.prev = true
		case "calibration":
			c.calib = true
		}
	}
	c.chans, c.allChans = channelRefs(ast)
	return c, nil
}

type pos struct{ file string }

// Input is what a condition sees of one snapshot.
type Input struct {
	Values  map[string]float64
	Prev    map[string]float64 // empty, not nil, without a previous snapshot
	Device  string             // measurement device path (gateway/device)
	Gateway string
	Type    string
	At      time.Time
	// Calibration returns the calibration of the device's instrument at
	// At (calibrationVars), called only when a condition reads it; nil:
	// unknown (no fleet link).
	Calibration func() map[string]any
}

// activation serves the variables without building a map per call.
type activation struct{ in *Input }

func (a activation) ResolveName(name string) (any, bool) {
	switch name {
	case "values":
		return a.in.Values, true
	case "prev":
		return a.in.Prev, true
	case "device":
		return a.in.Device, true
	case "gateway":
		return a.in.Gateway, true
	case "type":
		return a.in.Type, true
	case "at":
		return a.in.At, true
	case "calibration":
		if a.in.Calibration == nil {
			return calibrationVars(&unknownFlag), true
		}
		return a.in.Calibration(), true
	}
	return nil, false
}

func (a activation) Parent() cel.Activation { return nil }

// Eval evaluates the condition. An error is a rule error (a channel the
// snapshot lacks, a division by zero, the cost limit).
func (c *Condition) Eval(in *Input) (bool, error) {
	out, _, err := c.prg.Eval(activation{in})
	if err != nil {
		return false, evalError(err)
	}
	b, ok := out.(types.Bool)
	if !ok {
		return false, fmt.Errorf("the condition gave %s, not true or false", typeName(out))
	}
	return bool(b), nil
}

func typeName(v ref.Val) string {
	if v == nil {
		return "nothing"
	}
	return v.Type().TypeName()
}

// evalError makes CEL's run-time errors readable ("no such key: x" is
// the common one: a channel the snapshot does not have).
func evalError(err error) error {
	msg := err.Error()
	if k, ok := strings.CutPrefix(msg, "no such key: "); ok {
		if k == "due" {
			return errors.New(`no "due": calibration.due is absent when the device's DCC states no due date (guard with has(calibration.due)), or the snapshot has no channel "due" (has(values.due))`)
		}
		return fmt.Errorf("the snapshot has no channel %s (guard with has(values.%s))", strconv.Quote(k), k)
	}
	return errors.New(msg)
}
