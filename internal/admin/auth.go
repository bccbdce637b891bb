package admin

import (
	"crypto/subtle"
	"net/http"
	"strings"
)

// requireToken guards every request other than GET and HEAD (the ones
// that change something): with no token configured they answer 403, and
// without "Authorization: Bearer <token>" matching it, 401. Reading
// (metrics, status, probes) needs no token, as before.
func requireToken(token func() string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			next.ServeHTTP(w, r)
			return
		}
		want := token()
		if want == "" {
			http.Error(w, "forbidden: no admin_token is configured, so requests other than GET are refused", http.StatusForbidden)
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="tcpproxy admin"`)
			http.Error(w, "unauthorized: send Authorization: Bearer <admin_token>", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}
