// Package idcache caches the small integer ids a store gives to names:
// device types, units and channel groups (by table and name), channels (by
// name, unit and group) and devices (by gateway and device id). Both store
// implementations use it; they differ only in the width of their ids.
//
// Ids never change once committed, so the cache may serve them forever.
// Ids a transaction looked up or created are Staged and enter the Cache
// only after the transaction commits: a rolled-back id may be reused for
// another name.
package idcache

import (
	"sync"

	"github.com/fieldtrust/fieldtrust/internal/snapshot"
)

// ID is the type of a store's ids.
type ID interface{ ~int32 | ~int64 }

// Name identifies a row of one of the name tables.
type Name struct {
	Table string // device_types, units, channel_groups
	Name  string
}

// Channel identifies a channel.
type Channel struct{ Name, Unit, Group string }

// Device identifies a measurement device.
type Device struct{ Gateway, Device string }

// DeviceTypes is the table whose names Cache.TypeName resolves.
const DeviceTypes = "device_types"

// Staged holds the ids one transaction used.
type Staged[T ID] struct {
	Names    map[Name]T
	Channels map[Channel]T
	Devices  map[Device]T
}

// NewStaged returns an empty Staged.
func NewStaged[T ID]() *Staged[T] {
	return &Staged[T]{Names: map[Name]T{}, Channels: map[Channel]T{}, Devices: map[Device]T{}}
}

// Cache maps names to ids and back, for committed rows. It is safe for
// concurrent use.
type Cache[T ID] struct {
	mu       sync.RWMutex
	names    map[Name]T
	channels map[Channel]T
	devices  map[Device]T
	typeName map[T]string
	channel  map[T]Channel
}

// New returns an empty cache.
func New[T ID]() *Cache[T] {
	return &Cache[T]{names: map[Name]T{}, channels: map[Channel]T{}, devices: map[Device]T{}, typeName: map[T]string{}, channel: map[T]Channel{}}
}

// Name returns the id of a name, if cached.
func (c *Cache[T]) Name(k Name) (T, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	id, ok := c.names[k]
	return id, ok
}

// Channel returns the id of a channel, if cached.
func (c *Cache[T]) Channel(k Channel) (T, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	id, ok := c.channels[k]
	return id, ok
}

// Device returns the id of a device, if cached.
func (c *Cache[T]) Device(k Device) (T, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	id, ok := c.devices[k]
	return id, ok
}

// Merge adds the ids of a committed transaction.
func (c *Cache[T]) Merge(st *Staged[T]) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, id := range st.Names {
		c.names[k] = id
		if k.Table == DeviceTypes {
			c.typeName[id] = k.Name
		}
	}
	for k, id := range st.Channels {
		c.channels[k] = id
		c.channel[id] = k
	}
	for k, id := range st.Devices {
		c.devices[k] = id
	}
}

// Reader resolves ids back to names; valid only inside Read.
type Reader[T ID] struct{ c *Cache[T] }

// TypeName returns the device type name of an id.
func (r Reader[T]) TypeName(id T) (string, bool) {
	n, ok := r.c.typeName[id]
	return n, ok
}

// Value returns a snapshot value with the channel, unit and group of a
// channel id and the given reading.
func (r Reader[T]) Value(id T, v float64) (snapshot.Value, bool) {
	ch, ok := r.c.channel[id]
	return snapshot.Value{Channel: ch.Name, Unit: ch.Unit, Group: ch.Group, Value: v}, ok
}

// Read calls f with a Reader under one read lock, for resolving many ids
// (a page of snapshots) cheaply.
func (c *Cache[T]) Read(f func(Reader[T])) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	f(Reader[T]{c})
}

// ChannelsNamed returns the ids of every cached channel whose name is in
// want (a name may have several units or groups), and whether every wanted
// name was found.
func (c *Cache[T]) ChannelsNamed(want map[string]bool) (ids []T, complete bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	found := map[string]bool{}
	for k, id := range c.channels {
		if want[k.Name] {
			ids = append(ids, id)
			found[k.Name] = true
		}
	}
	return ids, len(found) == len(want)
}
