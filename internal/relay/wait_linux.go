package relay

import (
	"syscall"
	"unsafe"
)

// spliceQueued says that bulk data moves by splice(2) of the bytes
// SIOCINQ says are queued.
const spliceQueued = true

// siocinq is SIOCINQ (FIONREAD) from linux/sockios.h: bytes queued for
// reading on a TCP socket, not counting a received FIN.
const siocinq = 0x541B

// ioctlInq sets w.inq to the bytes queued on fd.
func (w *waiter) ioctlInq(fd uintptr) error {
	_, _, e := syscall.Syscall(syscall.SYS_IOCTL, fd, siocinq, uintptr(unsafe.Pointer(&w.inq)))
	if e != 0 {
		return e
	}
	return nil
}
