// Package logbuf is a log sink that tests read while the code under test
// writes to it from its own goroutines (a bytes.Buffer behind a mutex).
package logbuf

import (
	"bytes"
	"sync"
)

// Buffer collects what is written; safe for concurrent use.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
