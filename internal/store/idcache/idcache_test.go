package idcache

import (
	"slices"
	"testing"
)

func TestCache(t *testing.T) {
	c := New[int32]()
	st := NewStaged[int32]()
	st.Names[Name{DeviceTypes, "pump"}] = 1
	st.Names[Name{"units", "bar"}] = 2
	st.Channels[Channel{"pressure", "bar", "hydraulic"}] = 7
	st.Channels[Channel{"pressure", "psi", "hydraulic"}] = 8
	st.Devices[Device{"ms/acc/gw", "p-1"}] = 3
	if _, ok := c.Name(Name{DeviceTypes, "pump"}); ok {
		t.Fatal("staged ids visible before Merge")
	}
	c.Merge(st)
	if id, ok := c.Name(Name{DeviceTypes, "pump"}); !ok || id != 1 {
		t.Fatalf("Name = %d %v", id, ok)
	}
	if id, ok := c.Device(Device{"ms/acc/gw", "p-1"}); !ok || id != 3 {
		t.Fatalf("Device = %d %v", id, ok)
	}
	c.Read(func(r Reader[int32]) {
		if n, ok := r.TypeName(1); !ok || n != "pump" {
			t.Fatalf("TypeName = %q %v", n, ok)
		}
		if _, ok := r.TypeName(2); ok {
			t.Fatal("a unit resolved as a device type")
		}
		if v, ok := r.Value(8, 2.5); !ok || v.Unit != "psi" || v.Value != 2.5 || v.Channel != "pressure" {
			t.Fatalf("Value = %+v %v", v, ok)
		}
	})
	ids, complete := c.ChannelsNamed(map[string]bool{"pressure": true})
	slices.Sort(ids)
	if !complete || !slices.Equal(ids, []int32{7, 8}) {
		t.Fatalf("ChannelsNamed = %v %v", ids, complete)
	}
	if _, complete := c.ChannelsNamed(map[string]bool{"pressure": true, "flow": true}); complete {
		t.Fatal("a missing name reported complete")
	}
}
