package broker

import (
	"os"
	"syscall"
)

// datasync makes f's data durable without its metadata (mtime): in a
// preallocated file that is the whole cost of a commit.
func datasync(f *os.File) error { return syscall.Fdatasync(int(f.Fd())) }
