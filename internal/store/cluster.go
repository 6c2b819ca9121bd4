package store

import "time"

// DrainRequest is an operator's request that a node of a multi-node
// cluster drain ('fieldtrust cluster drain', docs/scale.md "Draining a
// node"); the zero value is no request. PostgreSQL only.
type DrainRequest struct {
	Node        string
	RequestedAt time.Time
	// DrainedAt is when the node had released everything and shut its
	// engine node down; zero while it drains.
	DrainedAt time.Time
}

// Requested reports whether there is a request.
func (d DrainRequest) Requested() bool { return !d.RequestedAt.IsZero() }

// Drained reports whether the node has drained.
func (d DrainRequest) Drained() bool { return !d.DrainedAt.IsZero() }
