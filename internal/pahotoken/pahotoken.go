// Package pahotoken is the one way platform services wait for and judge the
// tokens of the Eclipse Paho MQTT client: a token either completes, or the
// caller's context ends, or a limit passes — and a subscription counts only
// if the broker granted every filter (a missing result is a refusal: fail
// closed).
package pahotoken

import (
	"context"
	"fmt"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Wait waits for tok until it completes, ctx ends or limit passes. It
// returns the token's error, the context's cause, or an error naming the
// limit, so the caller's message says which one ended the wait.
func Wait(ctx context.Context, tok mqtt.Token, limit time.Duration) error {
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return fmt.Errorf("no answer from the broker within %v", limit)
	}
}

// Granted reports an error unless the completed subscribe token tok holds
// a grant (a code below 0x80) for every filter; role names the service role
// that grants them, for the error message.
func Granted(tok mqtt.Token, role string, filters ...string) error {
	st, ok := tok.(*mqtt.SubscribeToken)
	if !ok {
		return fmt.Errorf("subscribe: a %T is not a subscribe token", tok)
	}
	res := st.Result()
	for _, f := range filters {
		if code, found := res[f]; !found || code >= 0x80 {
			return fmt.Errorf("subscribe %s: refused by the broker (code %#x); does the service have the role %s?", f, code, role)
		}
	}
	return nil
}
