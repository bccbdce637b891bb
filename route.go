package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"github.com/inetaf/tcpproxy"

	"github.com/michaeldbianchi/tcpproxy/internal/health"
)

// proxyServer is the running proxy: one tcpproxy.Proxy with an AddRoute
// per app port, each routed to the app's failoverTarget.
type proxyServer struct {
	cfg     *config
	proxy   *tcpproxy.Proxy
	apps    []*failoverTarget
	ownerOf map[string]string // listen address -> app name, for errors
	ctx     context.Context   // cancelled when the server stops for good
	cancel  context.CancelFunc
	checks  []func() // waits for each app's active health checkers
	log     *slog.Logger
}

// newProxyServer routes every app of cfg onto a new tcpproxy.Proxy. It
// opens no listener: start does.
func newProxyServer(cfg *config, log *slog.Logger) (*proxyServer, error) {
	ctx, cancel := context.WithCancel(context.Background())
	s := &proxyServer{
		cfg:     cfg,
		proxy:   &tcpproxy.Proxy{},
		ownerOf: map[string]string{},
		ctx:     ctx,
		cancel:  cancel,
		log:     log,
	}
	s.proxy.ListenFunc = s.listen
	for _, app := range cfg.Apps {
		ft, err := newFailoverTarget(ctx, app, log, newConnSet())
		if err != nil {
			cancel()
			return nil, err
		}
		s.apps = append(s.apps, ft)
		for _, addr := range app.listenAddrs() {
			s.ownerOf[addr] = app.Name
			s.proxy.AddRoute(addr, ft)
		}
	}
	return s, nil
}

// listen is the proxy's ListenFunc: net.Listen with errors that name the
// app and address, so that "address already in use" says whose.
func (s *proxyServer) listen(network, addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1} // set per connection by the relay
	ln, err := lc.Listen(context.Background(), network, addr)
	if err != nil {
		return nil, fmt.Errorf("app %q: listen on %s: %w", s.ownerOf[addr], addr, unwrapOpError(err))
	}
	return ln, nil
}

// start opens every listener. If one fails, the ones already opened are
// closed (tcpproxy.Proxy.Start does that) and the error names it.
func (s *proxyServer) start() error {
	if err := s.proxy.Start(); err != nil {
		s.cancel()
		return err
	}
	for _, ft := range s.apps {
		if hc := ft.app.HealthCheck; hc != nil {
			check := health.Check{Interval: hc.Interval, Timeout: hc.Timeout, Rise: hc.Rise, Fall: hc.Fall}
			s.checks = append(s.checks, health.RunChecks(s.ctx, check, ft.healthTargets(), nil))
		}
	}
	return nil
}

// active returns the number of open client connections, all apps.
func (s *proxyServer) active() int {
	n := 0
	for _, ft := range s.apps {
		n += ft.conns.len()
	}
	return n
}

// shutdown stops accepting at once, lets open connections finish until
// ctx is done, then closes what is left. It returns how many
// connections finished on their own and how many were cut.
func (s *proxyServer) shutdown(ctx context.Context) (drained, cut int) {
	s.proxy.Close()
	open := s.active()
	for _, ft := range s.apps {
		select {
		case <-ft.conns.drained():
		case <-ctx.Done():
		}
	}
	s.cancel() // abort dials still in flight and stop health checks
	for _, ft := range s.apps {
		cut += ft.conns.closeAll()
	}
	for _, wait := range s.checks {
		wait()
	}
	drained = open - cut
	if drained < 0 {
		drained = 0 // connections accepted while the listeners closed
	}
	return drained, cut
}

// logConfig logs the loaded config, one line per app, the way the seed
// program did, and the addresses that will be listened on.
func logConfig(log *slog.Logger, cfg *config) {
	log.Info("config loaded", "path", cfg.Path, "apps", len(cfg.Apps), "shutdown_timeout", cfg.ShutdownTimeout.String())
	for _, a := range cfg.Apps {
		targets := make([]string, len(a.Targets))
		for i, t := range a.Targets {
			targets[i] = t.Address
		}
		log.Info("app", "name", a.Name, "ports", a.Ports, "targets", targets, "listen", a.listenAddrs(),
			"balance", a.Balance, "dial_timeout", a.DialTimeout.String())
	}
}
