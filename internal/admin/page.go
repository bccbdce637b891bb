package admin

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/michaeldbianchi/tcpproxy/internal/stats"
)

//go:embed page.html
var pageSource string

// pageRefresh is how often the page reloads itself; it is in the template's
// meta refresh as a number of seconds.
const pageRefresh = 5 * time.Second

// pageHandler renders the Snapshot as an HTML status page for people.
type pageHandler struct {
	snapshot func() stats.Snapshot
	log      *slog.Logger
	tmpl     *template.Template
	started  time.Time
	host     string
}

func newPageHandler(snapshot func() stats.Snapshot, log *slog.Logger) *pageHandler {
	host, err := os.Hostname()
	if err != nil {
		host = "" // only decorates the header; the page is useful without it
	}
	return &pageHandler{
		snapshot: snapshot,
		log:      log,
		// The template is a constant of the package: failing to parse it is
		// a bug that the tests catch, not a runtime condition.
		tmpl:    template.Must(template.New("page").Parse(pageSource)),
		started: time.Now(),
		host:    host,
	}
}

func (h *pageHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	v := h.view(h.snapshot(), time.Now())
	var buf bytes.Buffer
	if err := h.tmpl.Execute(&buf, v); err != nil {
		h.log.Error("render status page", "error", err, "remote", r.RemoteAddr)
		http.Error(w, "cannot render status page", http.StatusInternalServerError)
		return
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "text/html; charset=utf-8")
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("X-Content-Type-Options", "nosniff")
	// The page needs no script and no outside resource; saying so makes an
	// escaping slip harmless rather than an XSS.
	hdr.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'")
	_, _ = w.Write(buf.Bytes())
}

// pageView is what the template shows: the Snapshot, formatted.
type pageView struct {
	Refresh     int // seconds
	Host        string
	PID         int
	Now         string
	Started     string
	Uptime      string
	Reloads     stats.Reloads
	LastReload  string // the last successful config load, start included
	RateWindow  string
	Apps        []appView
	TargetsUp   int
	TargetCount int
}

type appView struct {
	Name           string
	Listen         string
	Ports          string
	Names          string // sni and http_host names, "" when routed by port alone
	Balance        string
	HealthChecks   string
	State          string // "up", "partial" or "down": the header's colour
	TargetsUp      int
	Drained        int
	Active         int64
	MaxConnections int    // 0: unlimited
	LimitUse       string // Active as a share of MaxConnections, "" if unlimited
	LimitHigh      int    // 80% and 95% of MaxConnections: the meter's
	LimitFull      int    // amber and red regions
	Total          int64
	RejectedLimit  int64
	RejectedDenied int64
	Failed         int64
	BytesToTarget  byteCount
	BytesToClient  byteCount
	ConnRate       string // per second over the rate window
	ToTargetRate   string
	ToClientRate   string
	Targets        []targetView
	TLS            string     // what the app does with TLS; "" when nothing
	Certs          []certView // its certificates, with their expiry
}

// certView is one certificate of an app.
type certView struct {
	Subject  string
	Names    string
	NotAfter string
	Left     string // "in 89d3h", or "expired 2d1h ago"
	State    string // "ok", "expiring" (within 14 days) or "expired": its colour
}

type targetView struct {
	Address      string
	State        string // "up", "down" or "drain": the row's colour
	Up           bool
	Drain        bool
	Health       string // who marked it down and since when, or "up"
	Weight       int
	Backup       bool
	Active       int64
	Total        int64
	Dials        int64
	Failures     int64
	LastError    string
	LastErrorAt  string
	LastErrorAgo string
}

// byteCount is a byte total shown both readably and exactly.
type byteCount struct {
	Human string
	Exact int64
}

func (h *pageHandler) view(s stats.Snapshot, now time.Time) pageView {
	v := pageView{
		Refresh:    int(pageRefresh / time.Second),
		Host:       h.host,
		PID:        os.Getpid(),
		Now:        now.Format(time.RFC3339),
		Started:    h.started.Format(time.RFC3339),
		Uptime:     humanDuration(now.Sub(h.started)),
		Reloads:    s.Reloads,
		RateWindow: humanDuration(stats.RateWindow),
		Apps:       make([]appView, 0, len(s.Apps)),
	}
	if !s.Reloads.LastSuccess.IsZero() {
		v.LastReload = s.Reloads.LastSuccess.Format(time.RFC3339) + " (" + humanDuration(now.Sub(s.Reloads.LastSuccess)) + " ago)"
	}
	for i := range s.Apps {
		av := appViewOf(&s.Apps[i], now)
		v.TargetsUp += av.TargetsUp
		v.TargetCount += len(av.Targets)
		v.Apps = append(v.Apps, av)
	}
	return v
}

// appViewOf formats one app and its targets.
func appViewOf(a *stats.App, now time.Time) appView {
	av := appView{
		Name:           a.Name,
		Listen:         listenHost(a.Listen),
		Ports:          joinPorts(a.Ports),
		Names:          routeNames(a.SNI, a.HTTPHost),
		Balance:        a.Balance,
		HealthChecks:   a.HealthChecks,
		Active:         a.Active,
		MaxConnections: a.MaxConnections,
		Total:          a.Total,
		RejectedLimit:  a.RejectedLimit,
		RejectedDenied: a.RejectedDenied,
		Failed:         a.Failed,
		BytesToTarget:  byteCount{Human: humanBytes(a.BytesToTarget), Exact: a.BytesToTarget},
		BytesToClient:  byteCount{Human: humanBytes(a.BytesToClient), Exact: a.BytesToClient},
		ConnRate:       strconv.FormatFloat(a.Rates.Connections, 'f', 1, 64),
		ToTargetRate:   humanBytes(int64(a.Rates.BytesToTarget)) + "/s",
		ToClientRate:   humanBytes(int64(a.Rates.BytesToClient)) + "/s",
		Targets:        make([]targetView, 0, len(a.Targets)),
	}
	if a.MaxConnections > 0 {
		av.LimitUse = strconv.FormatFloat(100*float64(a.Active)/float64(a.MaxConnections), 'f', 1, 64) + "%"
		av.LimitHigh, av.LimitFull = a.MaxConnections*80/100, a.MaxConnections*95/100
	}
	if a.TLS != nil {
		av.TLS, av.Certs = tlsViewOf(a.TLS, now)
	}
	for i := range a.Targets {
		tv := targetViewOf(&a.Targets[i], now)
		if tv.Up {
			av.TargetsUp++
		}
		if tv.Drain {
			av.Drained++
		}
		av.Targets = append(av.Targets, tv)
	}
	switch {
	case av.TargetsUp == len(av.Targets):
		av.State = "up"
	case av.TargetsUp == 0:
		av.State = "down"
	default:
		av.State = "partial"
	}
	return av
}

// targetViewOf formats one target.
func targetViewOf(t *stats.Target, now time.Time) targetView {
	tv := targetView{
		Address:   t.Address,
		State:     "up",
		Up:        t.Up,
		Drain:     t.Drain,
		Health:    "up",
		Weight:    t.Weight,
		Backup:    t.Backup,
		Active:    t.Active,
		Total:     t.Total,
		Dials:     t.Dials,
		Failures:  t.Failures,
		LastError: t.LastError,
	}
	if !t.Up {
		tv.State = "down"
		tv.Health = downHow(t.DownBy)
		if t.DownSince != nil {
			tv.Health += " since " + t.DownSince.Format(time.RFC3339) + " (" + humanDuration(now.Sub(*t.DownSince)) + ")"
		}
	}
	if t.Drain {
		tv.State = "drain"
	}
	if t.LastErrorAt != nil {
		tv.LastErrorAt = t.LastErrorAt.Format(time.RFC3339)
		tv.LastErrorAgo = humanDuration(now.Sub(*t.LastErrorAt)) + " ago"
	}
	return tv
}

// downHow says in words what marked a target down.
func downHow(by string) string {
	switch by {
	case "passive":
		return "down by failed dials (passive)"
	case "active":
		return "down by failed health checks (active)"
	default:
		return "down"
	}
}

// listenHost shows the listen host as it would appear before ":port".
func listenHost(h string) string {
	switch {
	case h == "":
		return "*" // all interfaces
	case strings.Contains(h, ":"):
		return "[" + h + "]"
	default:
		return h
	}
}

// routeNames shows what an app is routed by on a shared port.
func routeNames(sni, host []string) string {
	var parts []string
	if len(sni) > 0 {
		parts = append(parts, "sni "+strings.Join(sni, ", "))
	}
	if len(host) > 0 {
		parts = append(parts, "host "+strings.Join(host, ", "))
	}
	return strings.Join(parts, "; ")
}

func joinPorts(ports []int) string {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = strconv.Itoa(p)
	}
	return strings.Join(s, ", ")
}

// humanBytes formats n in IEC units with three significant digits or so.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	units := [...]string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	f, i := float64(n)/unit, 0
	for f >= unit && i < len(units)-1 {
		f /= unit
		i++
	}
	prec := 1
	if f < 10 {
		prec = 2
	}
	return strconv.FormatFloat(f, 'f', prec, 64) + " " + units[i]
}

// humanDuration formats d to its two largest units (3d4h, 5m12s): precise
// enough to judge at a glance, short enough for a table cell.
func humanDuration(d time.Duration) string {
	if d < 0 {
		d = 0 // clock skew between the writer of a time and this reader
	}
	d = d.Round(time.Second)
	days := d / (24 * time.Hour)
	d -= days * 24 * time.Hour
	hours := d / time.Hour
	d -= hours * time.Hour
	mins := d / time.Minute
	secs := (d - mins*time.Minute) / time.Second
	switch {
	case days > 0:
		return fmt.Sprintf("%dd%dh", days, hours)
	case hours > 0:
		return fmt.Sprintf("%dh%dm", hours, mins)
	case mins > 0:
		return fmt.Sprintf("%dm%ds", mins, secs)
	default:
		return fmt.Sprintf("%ds", secs)
	}
}

// certExpiring is how close to its expiry a certificate turns amber on
// the page, as it makes a config warning at load.
const certExpiring = 14 * 24 * time.Hour

// tlsViewOf says what an app does with TLS, and lists its certificates.
func tlsViewOf(t *stats.TLS, now time.Time) (string, []certView) {
	var parts []string
	h := t.Handshakes
	if t.Terminate {
		s := "terminates (min version " + t.MinVersion
		if len(t.ALPN) > 0 {
			s += ", ALPN " + strings.Join(t.ALPN, ", ")
		}
		if t.ClientAuth {
			s += ", client certificates required"
		}
		parts = append(parts, fmt.Sprintf("%s), handshakes %d ok, %d failed", s, h.ClientOK, h.ClientFailure))
	}
	if t.Target {
		parts = append(parts, fmt.Sprintf("to targets, handshakes %d ok, %d failed", h.TargetOK, h.TargetFailure))
	}
	certs := make([]certView, 0, len(t.Certificates))
	for _, c := range t.Certificates {
		cv := certView{Subject: c.Subject, Names: strings.Join(c.Names, ", "), NotAfter: c.NotAfter.UTC().Format(time.RFC3339), State: "ok"}
		switch left := c.NotAfter.Sub(now); {
		case left <= 0:
			cv.Left, cv.State = "expired "+humanDuration(-left)+" ago", "expired"
		case left < certExpiring:
			cv.Left, cv.State = "in "+humanDuration(left), "expiring"
		default:
			cv.Left = "in " + humanDuration(left)
		}
		if c.Use == "target_client" {
			cv.Subject += " (shown to targets)"
		}
		certs = append(certs, cv)
	}
	return strings.Join(parts, "; "), certs
}
