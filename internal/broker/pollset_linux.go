//go:build linux

package broker

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// epollSet is the parker's pollset on Linux: one epoll instance, each
// parked socket registered level-triggered and one-shot for input (and
// the peer's close or reset), plus an eventfd that ends the wait.
type epollSet struct {
	ep, ev int
}

func newPollSet() (pollSet, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	ev, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		_ = unix.Close(ep)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, ev, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(ev)}); err != nil {
		_ = unix.Close(ep)
		_ = unix.Close(ev)
		return nil, fmt.Errorf("epoll_ctl eventfd: %w", err)
	}
	return &epollSet{ep: ep, ev: ev}, nil
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
	for {
		n, err := unix.EpollWait(s.ep, events, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("epoll_wait: %w", err)
		}
		for _, e := range events[:n] {
			if int(e.Fd) == s.ev {
				return nil // close
			}
			ready(int(e.Fd))
		}
	}
}

// interrupt ends wait (closing the epoll instance under a blocked
// epoll_wait would not wake it).
func (s *epollSet) interrupt() error {
	var one = [8]byte{1}
	if _, err := unix.Write(s.ev, one[:]); err != nil {
		return fmt.Errorf("eventfd write: %w", err)
	}
	return nil
}

func (s *epollSet) release() error {
	return errors.Join(unix.Close(s.ep), unix.Close(s.ev))
}
