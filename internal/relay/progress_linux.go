package relay

import (
	"net"

	"golang.org/x/sys/unix"
)

// sendState reports, for c, how many bytes its peer has acknowledged
// since the connection opened (TCP_INFO tcpi_bytes_acked) and how many
// bytes c still holds unacknowledged or unsent in its send queue
// (SIOCOUTQ). ok is false when the kernel would not say.
func sendState(c *net.TCPConn) (acked uint64, queued int, ok bool) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, 0, false
	}
	var ierr, qerr error
	err = rc.Control(func(fd uintptr) {
		var info *unix.TCPInfo
		if info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); ierr == nil {
			acked = info.Bytes_acked
		}
		queued, qerr = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ)
	})
	return acked, queued, err == nil && ierr == nil && qerr == nil
}
