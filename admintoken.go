package main

import "regexp"

// bearerTokenRE is RFC 6750's b64token: what may follow "Bearer " in an
// Authorization header.
var bearerTokenRE = regexp.MustCompile(`^[A-Za-z0-9\-._~+/]+=*$`)

// adminToken checks the admin_token key: a bearer token, since that is
// how clients send it (Authorization: Bearer <token>).
func (v *validator) adminToken(tok string) string {
	if !bearerTokenRE.MatchString(tok) {
		v.errorf(v.node("admin_token"), "admin_token: must be a non-empty bearer token of letters, digits and -._~+/ (e.g. from `openssl rand -hex 32`)")
	}
	return tok
}

// token is the admin API's bearer token: TCPPROXY_ADMIN_TOKEN if set,
// else the running config's admin_token ("" refuses requests other than
// GET).
func (d *daemon) token() string {
	if d.opts.adminToken != "" {
		return d.opts.adminToken
	}
	if p := d.adminToken.Load(); p != nil {
		return *p
	}
	return ""
}
