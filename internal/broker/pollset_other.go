//go:build !linux

package broker

// Other systems keep one blocked reader goroutine per connection.
func newPollSet() (pollSet, error) { return nil, errNoPollSet }
