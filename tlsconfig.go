package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/michaeldbianchi/tcpproxy/internal/names"
)

// certExpiryWarning is how close to its expiry a certificate makes a
// config warning at load (at start, -check and every reload).
const certExpiryWarning = 14 * 24 * time.Hour

// The file model of the tls: and target_tls: keys (per app, and in
// defaults:, where the whole mapping is the default: an app's own tls:
// replaces it, key by key nothing is merged).

// tlsFile is the tls: mapping: terminate TLS from the app's clients.
type tlsFile struct {
	Certificates []certFile `yaml:"certificates"`
	MinVersion   *string    `yaml:"min_version"`
	ALPN         []string   `yaml:"alpn"`
	ClientCA     *string    `yaml:"client_ca"`
}

// certFile is one entry of tls.certificates: a certificate chain and its
// key, as PEM files; or, for demos and tests, self_signed: the names of a
// certificate made in memory at load.
type certFile struct {
	Cert       string   `yaml:"cert"`
	Key        string   `yaml:"key"`
	SelfSigned []string `yaml:"self_signed"`
}

// targetTLSFile is the target_tls: mapping: speak TLS to the targets.
type targetTLSFile struct {
	ServerName         *string `yaml:"server_name"`
	CA                 *string `yaml:"ca"`
	InsecureSkipVerify bool    `yaml:"insecure_skip_verify"`
	Cert               *string `yaml:"cert"`
	Key                *string `yaml:"key"`
}

// tlsConfig is an app's validated tls: block, its files read at load:
// the bytes checked are the bytes served, and a reload reads them again
// (so a SIGHUP with an unchanged config picks up renewed files).
type tlsConfig struct {
	Certificates []certPEM
	// MinVersion is tls.VersionTLS12 (the default) or tls.VersionTLS13.
	MinVersion uint16
	// ALPN are the offered ALPN protocols, in order; default none.
	ALPN []string
	// ClientCA is the path of the CAs that client certificates must chain
	// to (mTLS); "" (the default) asks for no client certificate.
	ClientCA    string
	ClientCAPEM []byte
}

// certPEM is one certificate chain and key as read at load.
type certPEM struct {
	Cert, Key  string   // paths as resolved; "" for a self-signed one
	SelfSigned []string // the names of a self-signed certificate; nil otherwise
	CertPEM    []byte
	KeyPEM     []byte
}

// targetTLSConfig is an app's validated target_tls: block.
type targetTLSConfig struct {
	// ServerName is sent as SNI and verified; "" (the default) means the
	// host of each target's address.
	ServerName string
	// CA is the path of the CAs target certificates must chain to; ""
	// (the default) means the system roots.
	CA    string
	CAPEM []byte
	// InsecureSkipVerify accepts any target certificate (default false).
	InsecureSkipVerify bool
	// Client is the certificate shown to targets that ask (mTLS); nil
	// (the default) shows none.
	Client *certPEM
}

// alpnKnown are the IANA-registered TLS ALPN protocol IDs: an alpn value
// must be one of them, so that a typo ("http/1") is caught at load.
var alpnKnown = []string{
	"http/0.9", "http/1.0", "http/1.1", "spdy/1", "spdy/2", "spdy/3", "stun.turn", "stun.nat-discovery",
	"h2", "h2c", "webrtc", "c-webrtc", "ftp", "imap", "pop3", "managesieve", "coap", "xmpp-client",
	"xmpp-server", "acme-tls/1", "mqtt", "dot", "ntske/1", "sunrpc", "h3", "smb", "irc", "nntp", "nnsp",
	"doq", "sip/2", "tds/8.0", "dicom", "postgresql", "radius/1.0", "radius/1.1",
}

// tlsOptions resolves the tls: and target_tls: keys of one app. It runs
// after routeNames: an app routed by HTTP Host receives plain HTTP, so
// it cannot terminate TLS.
func (v *validator) tlsOptions(app *appConfig, pick optionPicker, label string) {
	if o, n, ok := pick("tls", func(o *appOptions) bool { return o.TLS != nil }); ok {
		app.TLS = v.serverTLS(o.TLS, n, label)
		if len(app.HTTPHost) > 0 {
			v.errorf(n, "%s: tls: an app routed by http_host receives plain HTTP and cannot terminate TLS (route HTTPS by sni)", label)
		}
	}
	if o, n, ok := pick("target_tls", func(o *appOptions) bool { return o.TargetTLS != nil }); ok {
		app.TargetTLS = v.targetTLS(o.TargetTLS, n, label)
	}
}

// serverTLS validates a tls: mapping found at n.
func (v *validator) serverTLS(f *tlsFile, n *yaml.Node, label string) *tlsConfig {
	c := &tlsConfig{MinVersion: tls.VersionTLS12}
	if len(f.Certificates) == 0 {
		v.errorf(keyNode(n, "certificates"), "%s: tls: needs certificates: at least one {cert: FILE, key: FILE}", label)
	}
	certs := keyNode(n, "certificates")
	for i, cf := range f.Certificates {
		what := fmt.Sprintf("tls.certificates[%d]", i)
		if p, ok := v.certEntry(&cf, seqItem(certs, i), label, what); ok {
			c.Certificates = append(c.Certificates, p)
		}
	}
	if f.MinVersion != nil {
		switch *f.MinVersion {
		case "1.2":
		case "1.3":
			c.MinVersion = tls.VersionTLS13
		default:
			v.errorf(keyNode(n, "min_version"), "%s: tls.min_version %q: must be \"1.2\" or \"1.3\"", label, *f.MinVersion)
		}
	}
	c.ALPN = v.alpn(f.ALPN, keyNode(n, "alpn"), label)
	if f.ClientCA != nil {
		c.ClientCA, c.ClientCAPEM = v.caFile(keyNode(n, "client_ca"), *f.ClientCA, label, "tls.client_ca")
	}
	return c
}

// certEntry validates one entry of tls.certificates, at node n.
func (v *validator) certEntry(cf *certFile, n *yaml.Node, label, what string) (certPEM, bool) {
	switch {
	case cf.SelfSigned != nil && (cf.Cert != "" || cf.Key != ""):
		v.errorf(n, "%s: %s: self_signed stands alone, without cert and key", label, what)
	case cf.SelfSigned != nil:
		return v.selfSignedEntry(cf.SelfSigned, keyNode(n, "self_signed"), label, what)
	case cf.Cert == "" || cf.Key == "":
		v.errorf(n, "%s: %s: needs both cert and key (PEM files)", label, what)
	default:
		return v.certPair(n, cf.Cert, cf.Key, label, what)
	}
	return certPEM{}, false
}

// certPair reads and checks a certificate chain and its key: both parse,
// the key is the certificate's, the certificate has not expired (and
// expires in more than 14 days, or a warning says when).
func (v *validator) certPair(n *yaml.Node, cert, key, label, what string) (certPEM, bool) {
	p := certPEM{Cert: v.resolvePath(cert), Key: v.resolvePath(key)}
	var err error
	if p.CertPEM, err = readPEMFile(p.Cert); err != nil {
		v.errorf(keyNode(n, "cert"), "%s: %s: cert: %v", label, what, err)
	}
	if p.KeyPEM, err = readPEMFile(p.Key); err != nil {
		v.errorf(keyNode(n, "key"), "%s: %s: key: %v", label, what, err)
	}
	if p.CertPEM == nil || p.KeyPEM == nil {
		return p, false
	}
	pair, err := tls.X509KeyPair(p.CertPEM, p.KeyPEM)
	if err != nil {
		v.errorf(n, "%s: %s: cert %s and key %s: %s", label, what, p.Cert, p.Key, strings.TrimPrefix(err.Error(), "tls: "))
		return p, false
	}
	return p, v.checkValidity(keyNode(n, "cert"), pair.Leaf, label, what)
}

// checkValidity reports an expired certificate as an error, and one
// expiring within certExpiryWarning or not valid yet as a warning. Only
// the leaf counts: chains often carry an expired cross-signed
// intermediate that clients skip.
func (v *validator) checkValidity(n *yaml.Node, leaf *x509.Certificate, label, what string) bool {
	now := time.Now()
	subject := certSubject(leaf)
	switch left := leaf.NotAfter.Sub(now); {
	case left <= 0:
		v.errorf(n, "%s: %s: certificate %q expired on %s", label, what, subject, leaf.NotAfter.UTC().Format(time.RFC3339))
		return false
	case left < certExpiryWarning:
		v.warnf(n, "%s: %s: certificate %q expires on %s, in %s", label, what, subject, leaf.NotAfter.UTC().Format(time.RFC3339), left.Round(time.Minute))
	}
	if now.Before(leaf.NotBefore) {
		v.warnf(n, "%s: %s: certificate %q is not valid before %s", label, what, subject, leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	return true
}

// certSubject names a certificate for people and for the
// tcpproxy_tls_certificate_not_after_timestamp_seconds label: its
// subject, or its first name when the subject is empty.
func certSubject(c *x509.Certificate) string {
	if s := c.Subject.String(); s != "" {
		return s
	}
	if n := certNames(c); len(n) > 0 {
		return n[0]
	}
	return ""
}

// certNames are the DNS names and IP addresses a certificate is for.
func certNames(c *x509.Certificate) []string {
	out := slices.Clone(c.DNSNames)
	for _, ip := range c.IPAddresses {
		out = append(out, ip.String())
	}
	return out
}

// alpn validates the alpn list at n: known IDs, each once.
func (v *validator) alpn(list []string, n *yaml.Node, label string) []string {
	var out []string
	for i, p := range list {
		switch {
		case !slices.Contains(alpnKnown, p):
			v.errorf(seqItem(n, i), "%s: tls.alpn %q: not a registered ALPN protocol ID (such as h2, http/1.1, postgresql)", label, p)
		case slices.Contains(out, p):
			v.errorf(seqItem(n, i), "%s: tls.alpn %q listed twice", label, p)
		default:
			out = append(out, p)
		}
	}
	return out
}

// caFile reads a PEM bundle of CA certificates (client_ca, ca).
func (v *validator) caFile(n *yaml.Node, path, label, what string) (string, []byte) {
	path = v.resolvePath(path)
	b, err := readPEMFile(path)
	if err != nil {
		v.errorf(n, "%s: %s: %v", label, what, err)
		return path, nil
	}
	if !x509.NewCertPool().AppendCertsFromPEM(b) {
		v.errorf(n, "%s: %s: %s holds no PEM certificate", label, what, path)
		return path, nil
	}
	return path, b
}

// targetTLS validates a target_tls: mapping found at n.
func (v *validator) targetTLS(f *targetTLSFile, n *yaml.Node, label string) *targetTLSConfig {
	c := &targetTLSConfig{InsecureSkipVerify: f.InsecureSkipVerify}
	if f.ServerName != nil {
		c.ServerName = strings.TrimSuffix(*f.ServerName, ".")
		if err := checkServerName(c.ServerName); err != nil {
			v.errorf(keyNode(n, "server_name"), "%s: target_tls.server_name %q: %v", label, *f.ServerName, err)
		}
	}
	if f.CA != nil {
		c.CA, c.CAPEM = v.caFile(keyNode(n, "ca"), *f.CA, label, "target_tls.ca")
	}
	if c.InsecureSkipVerify {
		v.warnf(keyNode(n, "insecure_skip_verify"), "%s: target_tls.insecure_skip_verify: true: the targets' certificates are not verified, so anyone on the path to them can pose as them", label)
	}
	switch {
	case f.Cert == nil && f.Key == nil:
	case f.Cert == nil || f.Key == nil:
		v.errorf(n, "%s: target_tls: cert and key go together (the client certificate for targets that ask)", label)
	default:
		if p, ok := v.certPair(n, *f.Cert, *f.Key, label, "target_tls"); ok {
			c.Client = &p
		}
	}
	return c
}

// checkServerName accepts an IP address or a DNS name without a wildcard.
func checkServerName(s string) error {
	if _, err := netip.ParseAddr(s); err == nil {
		return nil
	}
	n, err := names.Parse(s)
	if err != nil {
		return err
	}
	if strings.HasPrefix(n, "*.") {
		return errors.New("a wildcard cannot be verified against: name one host")
	}
	return checkHostName(n)
}

// resolvePath makes a relative file name relative to the config file's
// directory, as nginx does with its configuration prefix.
func (v *validator) resolvePath(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(filepath.Dir(v.path), p)
}

// maxPEMFile bounds what is read of a certificate, key or CA file: a
// large CA bundle is a few hundred KiB.
const maxPEMFile = 16 << 20

// readPEMFile reads a certificate, key or CA file, with errors an
// operator can act on. Only a regular file (or a link to one) of at most
// maxPEMFile bytes is read, so that a config naming /dev/zero or a FIFO
// fails rather than hangs.
func readPEMFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("%s: file not found", path)
	case err != nil:
		return nil, fmt.Errorf("cannot read: %w", err)
	case !fi.Mode().IsRegular():
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPEMFile+1))
	switch {
	case err != nil:
		return nil, fmt.Errorf("cannot read %s: %w", path, err)
	case len(b) == 0:
		return nil, fmt.Errorf("%s is empty", path)
	case len(b) > maxPEMFile:
		return nil, fmt.Errorf("%s is over %d MiB: not a certificate, key or CA file", path, maxPEMFile>>20)
	}
	return b, nil
}

// selfSignedEntry validates self_signed names at n and returns the
// certificate made for them.
func (v *validator) selfSignedEntry(list []string, n *yaml.Node, label, what string) (certPEM, bool) {
	if len(list) == 0 {
		v.errorf(n, "%s: %s: self_signed needs at least one name", label, what)
		return certPEM{}, false
	}
	norm := make([]string, 0, len(list))
	for i, s := range list {
		name, err := names.Parse(s)
		if err != nil {
			v.errorf(seqItem(n, i), "%s: %s: self_signed %q: %v", label, what, s, err)
			return certPEM{}, false
		}
		norm = append(norm, name)
	}
	p, err := selfSignedPEM(norm)
	if err != nil {
		v.errorf(n, "%s: %s: self_signed: %v", label, what, err)
		return certPEM{}, false
	}
	return p, true
}

// selfSigned caches the certificates made for self_signed, by their
// names, for the life of the process: a reload keeps serving the same
// one, so it does not count as a change.
var selfSigned struct {
	mu    sync.Mutex
	certs map[string]certPEM
}

// selfSignedValidity is how long a self_signed certificate is valid.
const selfSignedValidity = 365 * 24 * time.Hour

// selfSignedPEM returns the self-signed certificate for names, made at
// its first use, in memory only.
func selfSignedPEM(names []string) (certPEM, error) {
	key := strings.Join(names, " ")
	selfSigned.mu.Lock()
	defer selfSigned.mu.Unlock()
	if p, ok := selfSigned.certs[key]; ok {
		return p, nil
	}
	der, priv, err := newSelfSigned(names[0], names, selfSignedValidity)
	if err != nil {
		return certPEM{}, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return certPEM{}, fmt.Errorf("encode key: %w", err)
	}
	p := certPEM{
		SelfSigned: names,
		CertPEM:    pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:     pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}
	if selfSigned.certs == nil {
		selfSigned.certs = map[string]certPEM{}
	}
	selfSigned.certs[key] = p
	return p, nil
}

// newSelfSigned makes a certificate for dnsNames with common name cn,
// signed by its own new ECDSA P-256 key, valid from an hour ago for
// validity. It returns the certificate's DER and the key.
func newSelfSigned(cn string, dnsNames []string, validity time.Duration) ([]byte, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, nil, fmt.Errorf("serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		DNSNames:     dnsNames,
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create certificate: %w", err)
	}
	return der, key, nil
}
