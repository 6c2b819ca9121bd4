//go:build !linux

package broker

// Other systems keep one blocked reader goroutine per connection.
func newPollSet() (pollSet, error) { return nil, errNoPollSet }

// sendQueued is never asked without a pollset.
func sendQueued(int) (int, error) { return 0, errNoPollSet }
