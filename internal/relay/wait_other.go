//go:build !linux

package relay

import "errors"

// spliceQueued is false: without splice(2) every chunk is a read and a
// write of smallSize at most, and the waiter never asks what is queued.
const spliceQueued = false

// ioctlInq is not called where spliceQueued is false.
func (w *waiter) ioctlInq(uintptr) error { return errors.New("relay: SIOCINQ is Linux-only") }
