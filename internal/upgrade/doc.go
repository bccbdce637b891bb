// Package upgrade replaces the running tcpproxy binary without refusing or
// resetting a single connection.
//
// Closing a listening socket resets the connections still waiting in its
// accept queue, so starting a second process on SO_REUSEPORT and stopping
// the first is not enough. Instead the old process (the parent) hands its
// listening sockets themselves to a new copy of the binary (the child).
// Both processes accept from the same kernel sockets until the child says
// it is ready; the parent then closes its descriptors, which leaves the
// sockets open in the child, and drains its own connections.
//
// Protocol between parent and child:
//
//   - fd 3 is the write end of a pipe. The child writes one byte and closes
//     it once it serves; the parent treats end-of-file without that byte as
//     a failed start.
//   - fds 4, 5, ... are the listening sockets, in the order of
//     TCPPROXY_UPGRADE_FDS.
//   - TCPPROXY_UPGRADE_READY_FD holds the number of the ready fd ("3").
//   - TCPPROXY_UPGRADE_FDS holds comma-separated "addr=fd" pairs, addr
//     being the listen address exactly as the config spells it, e.g.
//     "127.0.0.1:5001=4,:5002=5".
//
// The parent side is [Start]; the child side is [FromEnv] followed by
// [Inherited.Listener] for each configured address and [Inherited.Ready].
// The package only works on Unix systems (it passes file descriptors).
package upgrade

// Environment variables of the protocol. FromEnv removes them from the
// child's environment, so that processes it starts (including its own
// upgrade) do not believe they inherited anything.
const (
	envReadyFD = "TCPPROXY_UPGRADE_READY_FD"
	envFDs     = "TCPPROXY_UPGRADE_FDS"
)

// firstFD is the descriptor number of ExtraFiles[0] in the child.
const firstFD = 3
