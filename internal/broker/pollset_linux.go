//go:build linux

package broker

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// epollSet is the parker's pollset on Linux: one epoll instance, each
// parked socket registered level-triggered and one-shot for input (and the
// peer's close or reset).
//
// The epoll instance is itself registered with the Go runtime's poller
// (an epoll descriptor is readable while it has events): the wait loop
// sleeps in the scheduler like any goroutine blocked on a socket and
// collects events with a non-blocking epoll_wait when woken. A goroutine
// blocked in epoll_wait instead would hold an OS thread in a system call,
// and every wake-up would cost a thread hand-off (measured: about twice
// the CPU per keepalive ping of a blocked reader).
type epollSet struct {
	ep      int
	f       *os.File // ep, known to the runtime's poller
	raw     syscall.RawConn
	closing atomic.Bool
}

func newPollSet() (pollSet, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	if err := unix.SetNonblock(ep, true); err != nil { // os.NewFile then hands it to the runtime's poller
		_ = unix.Close(ep)
		return nil, fmt.Errorf("epoll descriptor non-blocking: %w", err)
	}
	f := os.NewFile(uintptr(ep), "epoll")
	raw, err := f.SyscallConn()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("epoll descriptor: %w", err)
	}
	return &epollSet{ep: ep, f: f, raw: raw}, nil
}

const parkEvents = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT

func (s *epollSet) add(fd int) error {
	if err := unix.EpollCtl(s.ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: parkEvents, Fd: int32(fd)}); err != nil {
		return fmt.Errorf("epoll_ctl add %d: %w", fd, err)
	}
	return nil
}

func (s *epollSet) rearm(fd int) error {
	if err := unix.EpollCtl(s.ep, unix.EPOLL_CTL_MOD, fd, &unix.EpollEvent{Events: parkEvents, Fd: int32(fd)}); err != nil {
		return fmt.Errorf("epoll_ctl mod %d: %w", fd, err)
	}
	return nil
}

func (s *epollSet) del(fd int) error {
	if err := unix.EpollCtl(s.ep, unix.EPOLL_CTL_DEL, fd, nil); err != nil {
		return fmt.Errorf("epoll_ctl del %d: %w", fd, err)
	}
	return nil
}

func (s *epollSet) wait(ready func(fd int)) error {
	events := make([]unix.EpollEvent, 128)
	var werr error
	err := s.raw.Read(func(ep uintptr) bool {
		for {
			n, err := unix.EpollWait(int(ep), events, 0)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				werr = fmt.Errorf("epoll_wait: %w", err)
				return true
			}
			for _, e := range events[:n] {
				ready(int(e.Fd))
			}
			if n < len(events) {
				// Drained (one system call per wake-up, not two): an event
				// that arrives from here on wakes the runtime's poller
				// again, which runs this function again.
				return false
			}
		}
	})
	if s.closing.Load() {
		return nil
	}
	if werr != nil {
		return werr
	}
	if err != nil {
		return fmt.Errorf("wait for epoll events: %w", err)
	}
	return errors.New("epoll wait loop ended")
}

// interrupt ends wait: closing the file wakes its reader.
func (s *epollSet) interrupt() error {
	s.closing.Store(true)
	return s.f.Close()
}

// release closes the descriptor if interrupt did not (the wait loop
// failed before).
func (s *epollSet) release() error {
	if s.closing.Swap(true) {
		return nil
	}
	return s.f.Close()
}

// sendQueued is the socket's send queue length in bytes (SIOCOUTQ:
// written, not yet acknowledged by the peer).
func sendQueued(fd int) (int, error) {
	n, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ)
	if err != nil {
		return 0, fmt.Errorf("ioctl SIOCOUTQ: %w", err)
	}
	return n, nil
}
