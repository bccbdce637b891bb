package relay

import (
	"fmt"
	"net"
	"time"
)

// DefaultKeepAlivePeriod is the keep-alive period SetKeepAlive uses for a
// zero period, matching inetaf/tcpproxy's DialProxy default.
const DefaultKeepAlivePeriod = time.Minute

// SetKeepAlive configures TCP keep-alives on c the way DialProxy does for
// connections it can unwrap to *net.TCPConn: period < 0 turns them off,
// 0 means DefaultKeepAlivePeriod, and > 0 is the period. DialProxy cannot
// see through a *Conn, so relayed connections must be configured with this.
func SetKeepAlive(c *net.TCPConn, period time.Duration) error {
	if period < 0 {
		if err := c.SetKeepAlive(false); err != nil {
			return fmt.Errorf("relay: disable keep-alive: %w", err)
		}
		return nil
	}
	if period == 0 {
		period = DefaultKeepAlivePeriod
	}
	if err := c.SetKeepAlive(true); err != nil {
		return fmt.Errorf("relay: enable keep-alive: %w", err)
	}
	if err := c.SetKeepAlivePeriod(period); err != nil {
		return fmt.Errorf("relay: set keep-alive period: %w", err)
	}
	return nil
}
