package gateway

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"strings"

	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/zfaas/zfaas/crypto/dualstack"
)

// JWTVerifier checks a JWT-SVID against the trust domain's JWT bundle and
// returns its SPIFFE ID. It must check signature, expiry and audience.
type JWTVerifier interface {
	VerifyJWTSVID(token, audience string) (spiffeID string, err error)
}

// BearerJWT authenticates callers that present a JWT-SVID as
// "Authorization: Bearer <token>" (HTTP) or "authorization" metadata (gRPC),
// whose audience includes Audience (the gateway's SPIFFE ID). Requests
// without a bearer token go to Next; a token that fails verification is
// ErrUnauthenticated (401), never a fallback to Next.
type BearerJWT struct {
	Verifier JWTVerifier
	Audience string
	// Next authenticates requests without a token; nil means Anonymous.
	Next Authenticator
	// NextContext authenticates gRPC calls without a token; nil means
	// Anonymous.
	NextContext ContextAuthenticator
}

// maxBearerBytes bounds the token the gateway is willing to parse.
const maxBearerBytes = 16 << 10

func bearer(h string) (string, bool) {
	scheme, token, ok := strings.Cut(strings.TrimSpace(h), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return strings.TrimSpace(token), true
}

func (b BearerJWT) verify(token string) (Caller, error) {
	if len(token) > maxBearerBytes {
		return Anonymous, fmt.Errorf("%w: bearer token too large", ErrUnauthenticated)
	}
	id, err := b.Verifier.VerifyJWTSVID(token, b.Audience)
	if err != nil {
		return Anonymous, fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	}
	return CallerFromID(id, "jwt"), nil
}

// Authenticate implements Authenticator.
func (b BearerJWT) Authenticate(r *http.Request) (Caller, error) {
	if token, ok := bearer(r.Header.Get("Authorization")); ok {
		return b.verify(token)
	}
	if b.Next == nil {
		return Anonymous, nil
	}
	return b.Next.Authenticate(r)
}

// AuthenticateContext implements ContextAuthenticator.
func (b BearerJWT) AuthenticateContext(ctx context.Context) (Caller, error) {
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if vs := md.Get("authorization"); len(vs) > 0 {
			if token, ok := bearer(vs[0]); ok {
				return b.verify(token)
			}
		}
	}
	if b.NextContext == nil {
		return Anonymous, nil
	}
	return b.NextContext.AuthenticateContext(ctx)
}

// TLSPeer authenticates requests and calls that arrived over TLS: the
// client's X.509-SVID (verified during the handshake by crypto/mtls), else a
// JWT-SVID bearer token, else ErrUnauthenticated. A request without TLS is
// refused: the gateway serves its APIs over TLS only.
type TLSPeer struct {
	Bearer BearerJWT
}

// Authenticate implements Authenticator. Over TLCP (crypto/dualstack,
// with the http.Server's ConnContext set to dualstack.ConnContext) the
// client's SM2 signing certificate is its X.509-SVID.
func (a TLSPeer) Authenticate(r *http.Request) (Caller, error) {
	cs, ok := requestState(r)
	if !ok {
		return Anonymous, fmt.Errorf("%w: the gateway accepts requests over TLS only", ErrUnauthenticated)
	}
	if id, ok := cs.PeerID(); ok {
		return CallerFromID(id.String(), "x509"), nil
	}
	if token, ok := bearer(r.Header.Get("Authorization")); ok {
		return a.Bearer.verify(token)
	}
	return Anonymous, errNoCredentials
}

// AuthenticateContext implements ContextAuthenticator for gRPC calls: the
// peer's X.509-SVID from the TLS handshake, else a JWT-SVID in the
// "authorization" metadata.
func (a TLSPeer) AuthenticateContext(ctx context.Context) (Caller, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Anonymous, fmt.Errorf("%w: no peer", ErrUnauthenticated)
	}
	cs, ok := dualstack.StateFromAuthInfo(p.AuthInfo)
	if !ok {
		return Anonymous, fmt.Errorf("%w: the gateway accepts calls over TLS only", ErrUnauthenticated)
	}
	if id, ok := cs.PeerID(); ok {
		return CallerFromID(id.String(), "x509"), nil
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if vs := md.Get("authorization"); len(vs) > 0 {
			if token, ok := bearer(vs[0]); ok {
				return a.Bearer.verify(token)
			}
		}
	}
	return Anonymous, errNoCredentials
}

var errNoCredentials = fmt.Errorf("%w: a client X.509-SVID or a JWT-SVID bearer token is required", ErrUnauthenticated)

// TLSState returns the protocol and cipher suite names of a connection
// state for policy input and logs ("" for none).
func TLSState(cs *tls.ConnectionState) (protocol, suite string) {
	if cs == nil {
		return "", ""
	}
	return tlsVersionName(cs.Version), tls.CipherSuiteName(cs.CipherSuite)
}

// requestState is the secured connection a request came over: TLS
// (r.TLS) or TLCP (from the connection's context).
func requestState(r *http.Request) (dualstack.ConnectionState, bool) {
	if r.TLS != nil {
		return dualstack.FromTLS(r.TLS), true
	}
	return dualstack.FromContext(r.Context())
}

// secureState names the protocol ("TLSv1.3", "TLSv1.2" or "TLCP") and the
// cipher suite of a connection for policy input, metrics and logs.
func secureState(cs dualstack.ConnectionState, ok bool) (protocol, suite string) {
	if !ok {
		return "", ""
	}
	if cs.GM() {
		return "TLCP", cs.CipherSuiteName
	}
	return tlsVersionName(cs.Version), cs.CipherSuiteName
}

func tlsVersionName(v uint16) string {
	switch v {
	case tls.VersionTLS13:
		return "TLSv1.3"
	case tls.VersionTLS12:
		return "TLSv1.2"
	case 0:
		return ""
	}
	return fmt.Sprintf("0x%04x", v)
}
