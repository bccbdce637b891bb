package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-multierror"
	"gopkg.in/yaml.v3"

	"github.com/michaeldbianchi/tcpproxy/internal/balance"
	"github.com/michaeldbianchi/tcpproxy/internal/health"
	"github.com/michaeldbianchi/tcpproxy/internal/names"
)

// Defaults for keys an operator leaves out that this package owns. Each
// default owned by the package that implements the behaviour is that
// package's constant: max_fails and fail_timeout are
// health.DefaultMaxFails and health.DefaultFailTimeout, health_check's
// keys health.DefaultInterval, DefaultTimeout, DefaultRise and
// DefaultFall (at least health.MinInterval and MinTimeout), balance is
// balance.Random, a weight at most balance.MaxWeight, and keepalive's
// zero relay.DefaultKeepAlivePeriod. README's table of keys is checked
// against them (TestREADMEDefaults).
const (
	defaultDialTimeout     = 3 * time.Second
	defaultShutdownTimeout = 10 * time.Second
	defaultHalfClose       = time.Minute
	// defaultPrereadTimeout is nginx's preread_timeout default.
	defaultPrereadTimeout = 5 * time.Second
)

// config is a loaded and validated configuration file.
type config struct {
	Path            string
	ShutdownTimeout time.Duration
	Admin           string // host:port of the admin server; "" is off
	AdminPublic     bool   // allow a non-loopback admin address
	ReusePort       bool   // SO_REUSEPORT on every listener
	Apps            []*appConfig

	// ShutdownDelay is how long the listeners keep accepting after
	// SIGTERM/SIGINT while /readyz answers 503; default 0.
	ShutdownDelay time.Duration
	// AdminToken is the bearer token the admin API's non-GET requests
	// need; "" (the default) refuses them all.
	AdminToken string
	// Warnings are what is valid but likely not what was meant (a CIDR
	// with host bits set): -check prints them, the proxy logs them.
	Warnings []configWarning
}

// configWarning is one warning about the config, at a line of its file.
type configWarning struct {
	Path string
	Line int
	Msg  string
}

// logWarnings logs the config's warnings, one line each, at warn.
func (c *config) logWarnings(log *slog.Logger) {
	for _, w := range c.Warnings {
		log.Warn("config warning", "at", fmt.Sprintf("%s:%d", w.Path, w.Line), "warning", w.Msg)
	}
}

// String is the warning as -check prints it: "path:line: warning: msg".
func (w configWarning) String() string {
	return fmt.Sprintf("%s:%d: warning: %s", w.Path, w.Line, w.Msg)
}

// appConfig is one app: the ports it listens on and the targets it
// forwards to, with every default already applied.
type appConfig struct {
	Name                string
	Listen              string // host to bind; "" means all interfaces
	Ports               []int
	Targets             []targetConfig
	DialTimeout         time.Duration
	Balance             string
	MaxFails            int
	FailTimeout         time.Duration
	HealthCheck         *healthCheckConfig // nil: no active checks
	MaxConnections      int                // 0: unlimited
	MaxAttempts         int                // 0: every target
	Allow, Deny         []netip.Prefix
	AccessLog           bool
	ProxyProtocol       int // PROXY protocol version sent to targets; 0 is none
	AcceptProxyProtocol bool
	KeepAlive           time.Duration // 0: the library's default (1m); < 0: off
	IdleTimeout         time.Duration // 0: off
	// HalfCloseTimeout bounds the phase after one side has finished: the
	// other direction is closed once it moves no data for this long.
	HalfCloseTimeout time.Duration
	// SNI and HTTPHost are the names (normalized by names.Parse) that
	// route a connection on a shared listen address to this app. An app
	// with neither is its addresses' default.
	SNI, HTTPHost []string
	// PrereadTimeout bounds how long a client of a name-routed address
	// may take to send what it is routed by (default 5s), and the TLS
	// handshake of an app with TLS.
	PrereadTimeout time.Duration

	// ProxyProtocolFrom are the load balancers allowed to send a PROXY
	// header; required (non-empty) with AcceptProxyProtocol, no default
	// (trust.go).
	ProxyProtocolFrom []netip.Prefix
	// TLS terminates TLS from clients (nil, the default: passed through);
	// TargetTLS speaks TLS to the targets (nil, the default: plain TCP).
	// See tlsconfig.go.
	TLS       *tlsConfig
	TargetTLS *targetTLSConfig
}

// named reports whether the app is routed by name on its addresses.
func (a *appConfig) named() bool { return len(a.SNI)+len(a.HTTPHost) > 0 }

// targetConfig is one target of an app.
type targetConfig struct {
	Address string // host:port as written in the config
	Weight  int
	Backup  bool
}

// healthCheckConfig enables active TCP-connect probes for an app.
type healthCheckConfig struct {
	Interval, Timeout time.Duration
	Rise, Fall        int
}

// listenAddrs returns the addresses the app listens on, one per port,
// in the form net.Listen and tcpproxy.Proxy.AddRoute take.
func (a *appConfig) listenAddrs() []string {
	addrs := make([]string, len(a.Ports))
	for i, p := range a.Ports {
		addrs[i] = net.JoinHostPort(a.Listen, strconv.Itoa(p))
	}
	return addrs
}

// The file model: what the YAML decodes into before validation.
// Optional keys are pointers so that "not set" (take the default, or
// the defaults: block) is told apart from a zero value.

type fileConfig struct {
	Defaults        appOptions `yaml:"defaults"`
	ShutdownTimeout *string    `yaml:"shutdown_timeout"`
	ShutdownDelay   *string    `yaml:"shutdown_delay"`
	AdminToken      *string    `yaml:"admin_token"`
	Admin           *string    `yaml:"admin"`
	AdminPublic     bool       `yaml:"admin_public"`
	ReusePort       bool       `yaml:"reuse_port"`
	Apps            []appFile  `yaml:"apps"`
}

type appFile struct {
	Name       string       `yaml:"name"`
	Ports      []int        `yaml:"ports"`
	Targets    []targetFile `yaml:"targets"`
	appOptions `yaml:",inline"`
}

// appOptions are the per-app keys that may also stand in defaults:.
type appOptions struct {
	Listen         *string          `yaml:"listen"`
	DialTimeout    *string          `yaml:"dial_timeout"`
	Balance        *string          `yaml:"balance"`
	MaxFails       *int             `yaml:"max_fails"`
	FailTimeout    *string          `yaml:"fail_timeout"`
	HealthCheck    *healthCheckFile `yaml:"health_check"`
	MaxConnections *int             `yaml:"max_connections"`
	MaxAttempts    *int             `yaml:"max_attempts"`
	Allow          *[]string        `yaml:"allow"`
	Deny           *[]string        `yaml:"deny"`
	AccessLog      *bool            `yaml:"access_log"`
	ProxyProtocol  *int             `yaml:"proxy_protocol"`
	AcceptProxy    *bool            `yaml:"accept_proxy_protocol"`
	KeepAlive      *string          `yaml:"keepalive"`
	IdleTimeout    *string          `yaml:"idle_timeout"`
	HalfClose      *string          `yaml:"half_close_timeout"`
	SNI            *[]string        `yaml:"sni"`
	HTTPHost       *[]string        `yaml:"http_host"`
	PrereadTimeout *string          `yaml:"preread_timeout"`

	// ProxyProtocolFrom lists who may send a PROXY header (trust.go).
	ProxyProtocolFrom *[]string      `yaml:"proxy_protocol_from"`
	TLS               *tlsFile       `yaml:"tls"`
	TargetTLS         *targetTLSFile `yaml:"target_tls"`
}

type healthCheckFile struct {
	Interval *string `yaml:"interval"`
	Timeout  *string `yaml:"timeout"`
	Rise     *int    `yaml:"rise"`
	Fall     *int    `yaml:"fall"`
}

// targetFile is a target written either as a plain "host:port" string
// (the seed format) or as a mapping with address, weight and backup.
type targetFile struct {
	Address string
	Weight  *int
	Backup  bool
}

// UnmarshalYAML accepts both target forms. It checks the mapping's keys
// itself because a custom unmarshaler does not inherit the decoder's
// KnownFields setting.
func (t *targetFile) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		t.Address = n.Value
		return nil
	case yaml.MappingNode:
		var errs []string
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			var err error
			switch k.Value {
			case "address":
				err = v.Decode(&t.Address)
			case "weight":
				t.Weight = new(int)
				err = v.Decode(t.Weight)
			case "backup":
				err = v.Decode(&t.Backup)
			default:
				errs = append(errs, fmt.Sprintf("line %d: field %s not found in type main.targetFile", k.Line, k.Value))
				continue
			}
			var te *yaml.TypeError
			if errors.As(err, &te) {
				errs = append(errs, te.Errors...)
			} else if err != nil {
				errs = append(errs, fmt.Sprintf("line %d: %v", v.Line, err))
			}
		}
		if errs != nil {
			return &yaml.TypeError{Errors: errs}
		}
		return nil
	default:
		return &yaml.TypeError{Errors: []string{fmt.Sprintf("line %d: a target is a \"host:port\" string or a mapping with address, weight and backup", n.Line)}}
	}
}

// loadConfig reads, decodes and validates the config file at path. On
// failure the error lists every problem found, one per line, each
// prefixed with path:line.
func loadConfig(path string) (*config, error) {
	data, err := readConfigFile(path)
	if err != nil {
		return nil, err
	}
	return parseConfig(path, data)
}

// readConfigFile reads path, turning the ways a path can be wrong into
// errors an operator can act on.
func readConfigFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s: config file not found", path)
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if fi.IsDir() {
		return nil, fmt.Errorf("%s: is a directory, not a config file", path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: cannot read config: %w", path, err)
	}
	return data, nil
}

// parseConfig decodes and validates data, which was read from path.
func parseConfig(path string, data []byte) (*config, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fmt.Errorf("%s: config file is empty (it needs an apps: list)", path)
	}
	if bytes.IndexByte(data, 0) >= 0 {
		return nil, fmt.Errorf("%s: not a YAML text file (it contains NUL bytes)", path)
	}

	// Two passes over the same text: a yaml.Node tree gives the line of
	// any value for the validator, and a strict decode into the file
	// model catches unknown keys and wrong types, all of them at once.
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("%s: invalid YAML: %s", path, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	v := &validator{path: path, root: &root, typeErrLines: map[int]bool{}, nameNodes: map[*appConfig]map[string]*yaml.Node{}, appNodes: map[*appConfig]*yaml.Node{}}

	var f fileConfig
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return nil, fmt.Errorf("%s: invalid YAML: %s", path, strings.TrimPrefix(err.Error(), "yaml: "))
		}
		for _, msg := range te.Errors {
			v.addTypeError(msg)
		}
		if duplicateKey(te) {
			// The decoder stops filling the model at a duplicate key, so
			// validating what it left would report what is not wrong.
			return nil, v.err()
		}
	}

	cfg := v.validate(&f)
	if err := v.err(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// duplicateKey reports whether the decoder found a key twice in a mapping.
func duplicateKey(te *yaml.TypeError) bool {
	for _, msg := range te.Errors {
		if strings.Contains(msg, "already defined at line") {
			return true
		}
	}
	return false
}

// validator turns the file model into a config, collecting every
// problem it finds together with the line it stands on.
type validator struct {
	path         string
	root         *yaml.Node
	errs         *multierror.Error
	typeErrLines map[int]bool // lines already reported by the decoder
	// nameNodes holds, per app, the node of each of its sni and
	// http_host names (keyed "sni NAME", "http_host NAME"); appNodes the
	// node of each app's name, to blame for what concerns the whole app.
	nameNodes map[*appConfig]map[string]*yaml.Node
	appNodes  map[*appConfig]*yaml.Node
	warnings  []configWarning
	resolved  map[string]string // hostsResolved's cache
}

// hostsOnly resolves names from the hosts file alone: validation sends
// no DNS query (it runs in -check, in tests and in fuzzing).
var hostsOnly = &net.Resolver{PreferGo: true, Dial: func(context.Context, string, string) (net.Conn, error) {
	return nil, errors.New("no DNS at validation")
}}

// hostsResolved returns the address a listen host name stands for in the
// hosts file ("localhost" is 127.0.0.1), an IPv4 one first as the
// listener would bind it, so that two spellings of one socket are seen
// to clash; an address, an unset host or a name the hosts file lacks is
// returned as it is.
func (v *validator) hostsResolved(host string) string {
	if host == "" || net.ParseIP(host) != nil {
		return host
	}
	if r, ok := v.resolved[host]; ok {
		return r
	}
	r := host
	if ips, err := hostsOnly.LookupNetIP(context.Background(), "ip", host); err == nil && len(ips) > 0 {
		slices.SortStableFunc(ips, func(a, b netip.Addr) int { return boolCmp(b.Is4(), a.Is4()) })
		r = ips[0].Unmap().String()
	}
	if v.resolved == nil {
		v.resolved = map[string]string{}
	}
	v.resolved[host] = r
	return r
}

// boolCmp orders false before true.
func boolCmp(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// warnf records a warning at node n.
func (v *validator) warnf(n *yaml.Node, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	v.warnings = append(v.warnings, configWarning{Path: v.path, Line: line, Msg: fmt.Sprintf(format, args...)})
}

var (
	yamlLineRE     = regexp.MustCompile(`^line (\d+): (.*)$`)
	yamlUnknownRE  = regexp.MustCompile(`^field (\S+) not found in type main\.(\w+)$`)
	yamlCannotRE   = regexp.MustCompile("^cannot unmarshal !!(\\w+) `?(.*?)`? into (.+)$")
	yamlTypeNames  = map[string]string{"int": "an integer", "string": "a string", "bool": "true or false", "[]int": "a list of ports", "[]main.targetFile": "a list of targets", "[]main.appFile": "a list of apps", "[]string": "a list", "main.appFile": "an app mapping", "main.fileConfig": "a mapping", "main.appOptions": "a mapping", "main.healthCheckFile": "a mapping", "main.tlsFile": "a mapping", "main.targetTLSFile": "a mapping", "[]main.certFile": "a list of certificates", "main.certFile": "a mapping"}
	fileModelNames = map[string]string{"fileConfig": "top level", "appFile": "app", "appOptions": "defaults", "healthCheckFile": "health_check", "targetFile": "target", "tlsFile": "tls", "certFile": "tls.certificates", "targetTLSFile": "target_tls"}
)

// addTypeError records one of yaml.v3's decode errors, reworded for an
// operator ("line 4: field tagets not found in type main.appFile"
// becomes `path:4: unknown key "tagets" in app`).
func (v *validator) addTypeError(msg string) {
	line := 0
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	}
	if m := yamlUnknownRE.FindStringSubmatch(msg); m != nil {
		msg = fmt.Sprintf("unknown key %q in %s", m[1], fileModelNames[m[2]])
	} else if m := yamlCannotRE.FindStringSubmatch(msg); m != nil {
		want := yamlTypeNames[m[3]]
		if want == "" {
			want = m[3]
		}
		if m[2] != "" {
			msg = fmt.Sprintf("%q must be %s", m[2], want)
		} else {
			msg = fmt.Sprintf("a %s here must be %s", m[1], want)
		}
	}
	v.typeErrLines[line] = true
	v.errs = multierror.Append(v.errs, fmt.Errorf("%s:%d: %s", v.path, line, msg))
}

// errorf records a problem at node n (nil when the key is absent: the
// line then falls back to the enclosing node, given as fallback).
func (v *validator) errorf(n *yaml.Node, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	if v.typeErrLines[line] && line != 0 {
		return // the decoder already said what is wrong on this line
	}
	v.errs = multierror.Append(v.errs, fmt.Errorf("%s:%d: %s", v.path, line, fmt.Sprintf(format, args...)))
}

func (v *validator) err() error {
	if v.errs == nil {
		return nil
	}
	v.errs.ErrorFormat = func(es []error) string {
		lines := make([]string, len(es))
		for i, e := range es {
			lines[i] = e.Error()
		}
		return strings.Join(lines, "\n")
	}
	return v.errs
}

// node returns the YAML node at path below the document root, where a
// string step is a mapping key and an int step a sequence index, or the
// deepest node found on the way when a step is missing.
func (v *validator) node(path ...any) *yaml.Node {
	n := v.root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	for _, step := range path {
		next := (*yaml.Node)(nil)
		switch s := step.(type) {
		case string:
			if n.Kind == yaml.MappingNode {
				for i := 0; i+1 < len(n.Content); i += 2 {
					if n.Content[i].Value == s {
						next = n.Content[i+1]
						break
					}
				}
			}
		case int:
			if n.Kind == yaml.SequenceNode && s < len(n.Content) {
				next = n.Content[s]
			}
		}
		if next == nil {
			return n
		}
		n = next
	}
	return n
}

// validate checks f and builds the config from it.
func (v *validator) validate(f *fileConfig) *config {
	cfg := v.topLevel(f)
	if len(f.Apps) == 0 {
		v.errorf(v.node("apps"), "no apps: the config needs an apps: list with at least one app")
	}
	names := map[string]int{} // app name -> line of first use
	ports := map[int][]boundPort{}
	for i := range f.Apps {
		af := &f.Apps[i]
		at := func(steps ...any) *yaml.Node { return v.node(append([]any{"apps", i}, steps...)...) }
		label := v.appLabel(af.Name, i, names, at("name"))
		app := v.appOptions(&af.appOptions, &f.Defaults, label, at)
		app.Name = af.Name
		v.appNodes[app] = at("name")
		v.ports(app, af.Ports, ports, label, at)
		v.targets(app, af.Targets, label, at)
		cfg.Apps = append(cfg.Apps, app)
	}
	v.sharedAddresses(cfg.Apps)
	v.adminClash(cfg)
	cfg.Warnings = v.warnings
	return cfg
}

// topLevel resolves the keys of the top level other than apps.
func (v *validator) topLevel(f *fileConfig) *config {
	cfg := &config{Path: v.path, ShutdownTimeout: defaultShutdownTimeout}
	if f.ShutdownTimeout != nil {
		cfg.ShutdownTimeout = v.durationAt(v.node("shutdown_timeout"), *f.ShutdownTimeout, "shutdown_timeout", false)
	}
	if f.ShutdownDelay != nil {
		cfg.ShutdownDelay = v.durationAt(v.node("shutdown_delay"), *f.ShutdownDelay, "shutdown_delay", false)
	}
	if f.AdminToken != nil {
		cfg.AdminToken = v.adminToken(*f.AdminToken)
	}
	if f.Admin != nil {
		cfg.Admin, cfg.AdminPublic = *f.Admin, f.AdminPublic
		if err := checkAdminAddr(cfg.Admin, cfg.AdminPublic); err != nil {
			v.errorf(v.node("admin"), "admin %q: %v", cfg.Admin, err)
		}
	}
	cfg.ReusePort = f.ReusePort
	return cfg
}

// appLabel checks the name of app #i (at node n), records it in names,
// and returns how errors name the app: `app "NAME"`, or "app #N" while
// it has no name of its own.
func (v *validator) appLabel(name string, i int, names map[string]int, n *yaml.Node) string {
	switch {
	case strings.TrimSpace(name) == "":
		v.errorf(n, "app #%d: missing name", i+1)
	case names[name] != 0:
		v.errorf(n, "app %q: duplicate app name (first used at line %d)", name, names[name])
	default:
		names[name] = n.Line
		return fmt.Sprintf("app %q", name)
	}
	return fmt.Sprintf("app #%d", i+1)
}

// boundPort is a listen address an app has claimed on a port, for
// telling clashes (validator.ports).
type boundPort struct {
	app, host string
	named     bool
	line      int
}

// ports checks the ports of app against those claimed so far (bound, by
// port) and claims them.
func (v *validator) ports(app *appConfig, list []int, bound map[int][]boundPort, label string, at func(...any) *yaml.Node) {
	if len(list) == 0 {
		v.errorf(at("ports"), "%s: no ports", label)
	}
	for j, p := range list {
		pn := at("ports", j)
		if p < 1 || p > 65535 {
			v.errorf(pn, "%s: port %d outside 1..65535", label, p)
			continue
		}
		for _, other := range bound[p] {
			shared := other.app != label && other.host == app.Listen && (other.named || app.named())
			if listenConflict(v.hostsResolved(app.Listen), v.hostsResolved(other.host)) && !shared {
				where := "within the app"
				if other.app != label {
					where = "also used by " + other.app
				}
				v.errorf(pn, "%s: listen address %s is already used at line %d (%s)", label, net.JoinHostPort(app.Listen, strconv.Itoa(p)), other.line, where)
				break
			}
		}
		bound[p] = append(bound[p], boundPort{app: label, host: app.Listen, named: app.named(), line: pn.Line})
		app.Ports = append(app.Ports, p)
	}
}

// targets checks the targets of app and sets them.
func (v *validator) targets(app *appConfig, list []targetFile, label string, at func(...any) *yaml.Node) {
	if len(list) == 0 {
		v.errorf(at("targets"), "%s: no targets", label)
	}
	seen := map[string]int{} // target address -> line
	for j, tf := range list {
		tn := at("targets", j)
		if tn.Kind == yaml.MappingNode {
			tn = at("targets", j, "address")
		}
		if err := checkHostPort(tf.Address); err != nil {
			v.errorf(tn, "%s: target %q: %v", label, tf.Address, err)
		} else if first, dup := seen[targetKey(tf.Address)]; dup {
			v.errorf(tn, "%s: target %q listed twice (first at line %d; use weight: to send it more)", label, tf.Address, first)
		} else {
			seen[targetKey(tf.Address)] = tn.Line
		}
		t := targetConfig{Address: tf.Address, Weight: 1, Backup: tf.Backup}
		if tf.Weight != nil {
			t.Weight = *tf.Weight
			if t.Weight < 0 || t.Weight > balance.MaxWeight {
				v.errorf(at("targets", j, "weight"), "%s: target %q: weight %d outside 0..%d", label, tf.Address, t.Weight, balance.MaxWeight)
			}
		}
		app.Targets = append(app.Targets, t)
	}
}

// adminClash reports an admin address that is the same socket as an
// app's listen address (or within one the kernel would refuse beside
// it), which would fail the start with "address already in use".
func (v *validator) adminClash(cfg *config) {
	host, port, err := net.SplitHostPort(cfg.Admin)
	if err != nil || checkPort(port) != nil {
		return // reported already, or no admin
	}
	p, _ := strconv.Atoi(port)
	for i, app := range cfg.Apps {
		if slices.Contains(app.Ports, p) && listenConflict(host, app.Listen) {
			pn := v.node("apps", i, "ports")
			for _, item := range pn.Content {
				if item.Value == port {
					pn = item
				}
			}
			v.errorf(v.node("admin"), "admin %q: the same socket as app %q's listen address %s (line %d)",
				cfg.Admin, app.Name, net.JoinHostPort(app.Listen, port), pn.Line)
			return
		}
	}
}

// sharedAddresses checks the apps that share a listen address by name:
// no name twice on one address, and one setting for what happens before
// the name that picks the app is known.
func (v *validator) sharedAddresses(apps []*appConfig) {
	type claim struct {
		app  *appConfig
		line int
	}
	seen := map[string]claim{}          // "addr key" -> first claim
	firstApp := map[string]*appConfig{} // addr -> first app on it
	for _, app := range apps {
		for _, addr := range app.listenAddrs() {
			if first := firstApp[addr]; first == nil {
				firstApp[addr] = app
			} else {
				v.sameOnSharedAddress(first, app, addr)
			}
			for key, n := range v.nameNodes[app] {
				if first, dup := seen[addr+" "+key]; !dup {
					seen[addr+" "+key] = claim{app, n.Line}
				} else if first.app != app {
					v.errorf(n, "app %q: %s is already routed to app %q on %s (line %d)", app.Name, key, first.app.Name, addr, first.line)
				}
			}
		}
	}
}

// sameOnSharedAddress reports the address-wide settings on which app
// disagrees with first, the first app on addr: whether a PROXY header
// comes first, and how long the peek for a name may take.
func (v *validator) sameOnSharedAddress(first, app *appConfig, addr string) {
	if first.AcceptProxyProtocol != app.AcceptProxyProtocol {
		v.errorf(v.appNodes[app], "app %q: accept_proxy_protocol differs from app %q on the shared listen address %s (the header is read before the app is known)", app.Name, first.Name, addr)
	}
	v.sameProxyProtocolFrom(first, app, addr)
	if first.PrereadTimeout != app.PrereadTimeout {
		v.errorf(v.appNodes[app], "app %q: preread_timeout %v differs from app %q's %v on the shared listen address %s (it bounds the peek, before the app is known; set it in defaults:)", app.Name, app.PrereadTimeout, first.Name, first.PrereadTimeout, addr)
	}
}

// appOptions resolves the per-app options of one app: its own value if
// set, else the defaults: block's, else the built-in default.
func (v *validator) appOptions(own, def *appOptions, label string, at func(...any) *yaml.Node) *appConfig {
	// pick returns which block sets a key and the node to blame.
	var pick optionPicker = func(key string, set func(*appOptions) bool) (*appOptions, *yaml.Node, bool) {
		if set(own) {
			return own, at(key), true
		}
		if set(def) {
			return def, v.node("defaults", key), true
		}
		return nil, nil, false
	}
	app := &appConfig{
		HalfCloseTimeout: defaultHalfClose,
		PrereadTimeout:   defaultPrereadTimeout,
		DialTimeout:      defaultDialTimeout,
		Balance:          balance.Random,
		MaxFails:         health.DefaultMaxFails,
		FailTimeout:      health.DefaultFailTimeout,
	}
	v.dialOptions(app, pick, label)
	v.healthOptions(app, pick, label)
	v.admissionOptions(app, pick, label)
	v.streamOptions(app, pick, label)
	v.routeNames(app, pick, label)
	v.proxyProtocolFrom(app, pick, label)
	v.tlsOptions(app, pick, label)
	return app
}

// dialOptions resolves where the app listens and how it dials: listen,
// dial_timeout and balance.
func (v *validator) dialOptions(app *appConfig, pick optionPicker, label string) {
	if o, n, ok := pick("listen", func(o *appOptions) bool { return o.Listen != nil }); ok {
		host, err := parseListenHost(*o.Listen)
		if err != nil {
			v.errorf(n, "%s: listen %q: %v", label, *o.Listen, err)
		}
		app.Listen = host
	}
	if o, n, ok := pick("dial_timeout", func(o *appOptions) bool { return o.DialTimeout != nil }); ok {
		app.DialTimeout = v.durationAt(n, *o.DialTimeout, label+": dial_timeout", true)
	}
	if o, n, ok := pick("balance", func(o *appOptions) bool { return o.Balance != nil }); ok {
		app.Balance = *o.Balance
		if !balance.Valid(app.Balance) {
			v.errorf(n, "%s: balance %q: must be one of random, round_robin, least_conn, hash", label, app.Balance)
		}
	}
}

// healthOptions resolves max_fails, fail_timeout and health_check.
func (v *validator) healthOptions(app *appConfig, pick optionPicker, label string) {
	if o, n, ok := pick("max_fails", func(o *appOptions) bool { return o.MaxFails != nil }); ok {
		app.MaxFails = *o.MaxFails
		if app.MaxFails < 0 {
			v.errorf(n, "%s: max_fails %d: must be 0 (passive health off) or more", label, app.MaxFails)
		}
	}
	if o, n, ok := pick("fail_timeout", func(o *appOptions) bool { return o.FailTimeout != nil }); ok {
		app.FailTimeout = v.durationAt(n, *o.FailTimeout, label+": fail_timeout", true)
	}
	if o, n, ok := pick("health_check", func(o *appOptions) bool { return o.HealthCheck != nil }); ok {
		app.HealthCheck = v.healthCheck(o.HealthCheck, n, label)
	}
}

// admissionOptions resolves what decides whether a client is relayed:
// max_connections, max_attempts, allow and deny.
func (v *validator) admissionOptions(app *appConfig, pick optionPicker, label string) {
	if o, n, ok := pick("max_connections", func(o *appOptions) bool { return o.MaxConnections != nil }); ok {
		app.MaxConnections = *o.MaxConnections
		if app.MaxConnections < 0 {
			v.errorf(n, "%s: max_connections %d: must be 0 (unlimited) or more", label, app.MaxConnections)
		}
	}
	if o, n, ok := pick("max_attempts", func(o *appOptions) bool { return o.MaxAttempts != nil }); ok {
		app.MaxAttempts = *o.MaxAttempts
		if app.MaxAttempts < 0 {
			v.errorf(n, "%s: max_attempts %d: must be 0 (every target) or more", label, app.MaxAttempts)
		}
	}
	if o, n, ok := pick("allow", func(o *appOptions) bool { return o.Allow != nil }); ok {
		app.Allow = v.prefixes(*o.Allow, n, label+": allow")
	}
	if o, n, ok := pick("deny", func(o *appOptions) bool { return o.Deny != nil }); ok {
		app.Deny = v.prefixes(*o.Deny, n, label+": deny")
	}
}

// streamOptions resolves what applies to a relayed connection:
// access_log, the PROXY protocol, keepalive and the idle timeouts.
func (v *validator) streamOptions(app *appConfig, pick optionPicker, label string) {
	if o, _, ok := pick("access_log", func(o *appOptions) bool { return o.AccessLog != nil }); ok {
		app.AccessLog = *o.AccessLog
	}
	if o, n, ok := pick("proxy_protocol", func(o *appOptions) bool { return o.ProxyProtocol != nil }); ok {
		app.ProxyProtocol = *o.ProxyProtocol
		if app.ProxyProtocol < 0 || app.ProxyProtocol > 2 {
			v.errorf(n, "%s: proxy_protocol %d: must be 1, 2 or 0 (none)", label, app.ProxyProtocol)
		}
	}
	if o, _, ok := pick("accept_proxy_protocol", func(o *appOptions) bool { return o.AcceptProxy != nil }); ok {
		app.AcceptProxyProtocol = *o.AcceptProxy
	}
	if o, n, ok := pick("keepalive", func(o *appOptions) bool { return o.KeepAlive != nil }); ok {
		app.KeepAlive = v.durationAt(n, *o.KeepAlive, label+": keepalive", false, true)
	}
	if o, n, ok := pick("idle_timeout", func(o *appOptions) bool { return o.IdleTimeout != nil }); ok {
		app.IdleTimeout = v.durationAt(n, *o.IdleTimeout, label+": idle_timeout", false)
	}
	if o, n, ok := pick("half_close_timeout", func(o *appOptions) bool { return o.HalfClose != nil }); ok {
		app.HalfCloseTimeout = v.durationAt(n, *o.HalfClose, label+": half_close_timeout", true)
	}
}

// optionPicker says which block sets a per-app key, and the node to
// blame for its value.
type optionPicker func(key string, set func(*appOptions) bool) (*appOptions, *yaml.Node, bool)

// routeNames resolves the keys that route by name: sni, http_host and
// preread_timeout.
func (v *validator) routeNames(app *appConfig, pick optionPicker, label string) {
	if o, n, ok := pick("sni", func(o *appOptions) bool { return o.SNI != nil }); ok {
		app.SNI = v.serverNames(app, "sni", *o.SNI, n, label)
	}
	if o, n, ok := pick("http_host", func(o *appOptions) bool { return o.HTTPHost != nil }); ok {
		app.HTTPHost = v.serverNames(app, "http_host", *o.HTTPHost, n, label)
	}
	if o, n, ok := pick("preread_timeout", func(o *appOptions) bool { return o.PrereadTimeout != nil }); ok {
		app.PrereadTimeout = v.durationAt(n, *o.PrereadTimeout, label+": preread_timeout", true)
	}
}

// serverNames validates the app's list of sni or http_host names (key
// says which) and records each name's node.
func (v *validator) serverNames(app *appConfig, key string, list []string, n *yaml.Node, label string) []string {
	out := make([]string, 0, len(list))
	if v.nameNodes[app] == nil {
		v.nameNodes[app] = map[string]*yaml.Node{}
	}
	for i, s := range list {
		name, err := names.Parse(s)
		if err != nil {
			v.errorf(seqItem(n, i), "%s: %s %q: %v", label, key, s, err)
			continue
		}
		k := key + " " + name
		if first, dup := v.nameNodes[app][k]; dup {
			v.errorf(seqItem(n, i), "%s: %s %q listed twice (first at line %d)", label, key, s, first.Line)
			continue
		}
		v.nameNodes[app][k] = seqItem(n, i)
		out = append(out, name)
	}
	return out
}

// seqItem returns item i of sequence n, or n itself.
func seqItem(n *yaml.Node, i int) *yaml.Node {
	if n != nil && n.Kind == yaml.SequenceNode && i < len(n.Content) {
		return n.Content[i]
	}
	return n
}

// healthCheck resolves an app's health_check mapping. An interval under
// health.MinInterval or a timeout under health.MinTimeout would burn CPU
// and mark live targets down, and a timeout longer than the interval
// makes no sense, so they are errors; a timeout left out is the default
// or the interval, whichever is shorter.
func (v *validator) healthCheck(f *healthCheckFile, n *yaml.Node, label string) *healthCheckConfig {
	hc := &healthCheckConfig{Interval: health.DefaultInterval, Timeout: health.DefaultTimeout, Rise: health.DefaultRise, Fall: health.DefaultFall}
	key := func(k string) *yaml.Node { return keyNode(n, k) }
	if f.Interval != nil {
		hc.Interval = v.durationAt(key("interval"), *f.Interval, label+": health_check.interval", true)
		v.atLeast(key("interval"), hc.Interval, health.MinInterval, label+": health_check.interval")
	}
	hc.Timeout = min(hc.Timeout, hc.Interval)
	if f.Timeout != nil {
		hc.Timeout = v.durationAt(key("timeout"), *f.Timeout, label+": health_check.timeout", true)
		v.atLeast(key("timeout"), hc.Timeout, health.MinTimeout, label+": health_check.timeout")
		if hc.Timeout > hc.Interval && hc.Interval > 0 {
			v.errorf(key("timeout"), "%s: health_check.timeout: %v is longer than health_check.interval (%v)", label, hc.Timeout, hc.Interval)
		}
	}
	if f.Rise != nil {
		if hc.Rise = *f.Rise; hc.Rise < 1 {
			v.errorf(key("rise"), "%s: health_check.rise %d: must be 1 or more", label, hc.Rise)
		}
	}
	if f.Fall != nil {
		if hc.Fall = *f.Fall; hc.Fall < 1 {
			v.errorf(key("fall"), "%s: health_check.fall %d: must be 1 or more", label, hc.Fall)
		}
	}
	return hc
}

// atLeast reports d, the value of the key at n, if it is positive but
// below lo (zero and negative values are reported by durationAt).
func (v *validator) atLeast(n *yaml.Node, d, lo time.Duration, label string) {
	if d > 0 && d < lo {
		v.errorf(n, "%s: %v is below the minimum of %v", label, d, lo)
	}
}

// keyNode returns the value node of key in mapping n, or n itself.
func keyNode(n *yaml.Node, key string) *yaml.Node {
	if n != nil && n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				return n.Content[i+1]
			}
		}
	}
	return n
}

// prefixes parses allow/deny entries: CIDRs or single addresses.
func (v *validator) prefixes(list []string, n *yaml.Node, label string) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(list))
	for i, s := range list {
		en := seqItem(n, i)
		p, err := parsePrefix(s)
		if err != nil {
			v.errorf(en, "%s: %q is not an IP address or CIDR", label, s)
			continue
		}
		if raw, err := netip.ParsePrefix(strings.TrimSpace(s)); err == nil && p.Addr() != raw.Addr() && p.Addr() != raw.Addr().Unmap() {
			// As nginx says of "low address bits": 10.1.2.3/8 is 10.0.0.0/8.
			v.warnf(en, "%s %q has host bits set: taken as %s", label, s, p)
		}
		out = append(out, p)
	}
	return out
}

// parsePrefix parses "10.0.0.0/8", "2001:db8::/32" or a single address,
// which becomes a prefix of one address. IPv4-mapped IPv6 is unmapped so
// that it matches clients the way the operator wrote it.
func parsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// durationAt parses a Go duration such as "3s" or "1m30s" found at n.
// positive requires d > 0; otherwise d >= 0 is required, unless
// negativeOK (keepalive, where a negative value means off).
func (v *validator) durationAt(n *yaml.Node, s, label string, positive bool, negativeOK ...bool) time.Duration {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		v.errorf(n, "%s: %q is not a duration (use e.g. 3s, 500ms, 1m)", label, s)
		return 0
	}
	switch {
	case positive && d <= 0:
		v.errorf(n, "%s: %s must be greater than zero", label, s)
	case d < 0 && len(negativeOK) == 0:
		v.errorf(n, "%s: %s must not be negative", label, s)
	}
	return d
}

// checkHostPort reports whether s is a dialable "host:port" with a port
// written as a plain decimal number in 1..65535. The host may be a DNS
// name: it is resolved at dial time, so a name that moves is followed.
func checkHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return errors.New(`not "host:port"`)
	}
	if host == "" {
		return errors.New("missing host")
	}
	if err := checkPort(port); err != nil {
		return err
	}
	if _, err := netip.ParseAddr(host); err != nil && checkHostName(host) != nil {
		return fmt.Errorf("host %q is %s", host, notAnIP)
	}
	return nil
}

// checkAdminAddr refuses an admin address that would expose the admin
// server beyond this host, unless public says that is meant.
func checkAdminAddr(addr string, public bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New(`not "host:port"`)
	}
	if err := checkPort(port); err != nil {
		return err
	}
	if _, err := netip.ParseAddr(host); err != nil && host != "" && checkHostName(host) != nil {
		return fmt.Errorf("host %q is %s", host, notAnIP)
	}
	if public {
		return nil
	}
	if host == "" {
		return errors.New("no host means every interface: use 127.0.0.1:PORT, or set admin_public: true to expose it")
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return errors.New("not a loopback address: set admin_public: true to expose the admin server beyond this host")
	}
	return nil
}

// summary is the one-line result of -check. Listeners are distinct
// listen addresses; routes are what the library matches on them: one
// per name and one per default app, on each address.
func (c *config) summary() string {
	addrs := map[string]bool{}
	targets, routes := 0, 0
	for _, a := range c.Apps {
		for _, addr := range a.listenAddrs() {
			addrs[addr] = true
		}
		targets += len(a.Targets)
		perAddr := max(len(a.SNI)+len(a.HTTPHost), 1)
		routes += perAddr * len(a.Ports)
	}
	return fmt.Sprintf("config OK: %d apps, %d listeners, %d targets, %d routes", len(c.Apps), len(addrs), targets, routes)
}
