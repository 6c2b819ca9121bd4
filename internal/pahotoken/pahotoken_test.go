package pahotoken

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// token is a paho token whose completion the test controls.
type token struct {
	done chan struct{}
	err  error
}

func (t *token) Wait() bool                     { <-t.done; return true }
func (t *token) WaitTimeout(time.Duration) bool { return false }
func (t *token) Done() <-chan struct{}          { return t.done }
func (t *token) Error() error                   { return t.err }

func TestWait(t *testing.T) {
	refused := errors.New("not authorized")
	stop := errors.New("service stopping")
	closed := make(chan struct{})
	close(closed)
	tests := []struct {
		name  string
		tok   *token
		ctx   func() context.Context
		limit time.Duration
		want  func(error) bool
	}{
		{"completed", &token{done: closed}, context.Background, time.Hour, func(err error) bool { return err == nil }},
		{"completed with an error", &token{done: closed, err: refused}, context.Background, time.Hour,
			func(err error) bool { return errors.Is(err, refused) }},
		{"context ended: its cause", &token{done: make(chan struct{})}, func() context.Context {
			ctx, cancel := context.WithCancelCause(context.Background())
			cancel(stop)
			return ctx
		}, time.Hour, func(err error) bool { return errors.Is(err, stop) }},
		{"limit passed: named", &token{done: make(chan struct{})}, context.Background, time.Millisecond,
			func(err error) bool { return err != nil && strings.Contains(err.Error(), "within 1ms") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := Wait(tt.ctx(), tt.tok, tt.limit); !tt.want(err) {
				t.Fatalf("Wait = %v", err)
			}
		})
	}
}

func TestGrantedFailsClosed(t *testing.T) {
	// A subscribe token without a result for the filter (the broker's SUBACK
	// named fewer filters than were asked for) is a refusal.
	err := Granted(&mqtt.SubscribeToken{}, "snapshot-reader", "+/+/+/snapshots")
	if err == nil || !strings.Contains(err.Error(), "snapshot-reader") {
		t.Fatalf("Granted without a result = %v, want a refusal naming the role", err)
	}
	if err := Granted(&token{}, "x", "a"); err == nil {
		t.Fatal("Granted accepted a token that is not a subscribe token")
	}
}
