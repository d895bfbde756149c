package main

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"sync"

	"google.golang.org/grpc/peer"

	"github.com/zfaas/zfaas/gateway"
)

// instancePeers tells whether a loopback connection comes from a function
// instance (the worker implements it).
type instancePeers interface {
	IsInstancePeer(local, remote net.Addr) bool
}

// localAuth is the all-in-one shape's development authenticator until mTLS
// identities exist: every loopback caller is the local administrator —
// except function instances, which share the host's loopback and are
// treated as anonymous, so a function can never act as the administrator.
type localAuth struct {
	admin gateway.LocalAdmin
	peers instancePeers
	log   *slog.Logger
}

type connKey struct{}

// connInfo caches the instance check for one connection.
type connInfo struct {
	local, remote net.Addr
	once          sync.Once
	fromInstance  bool
}

// connContext is the http.Server's ConnContext: it records the connection
// so the authenticator can check its peer once.
func connContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, &connInfo{local: c.LocalAddr(), remote: c.RemoteAddr()})
}

func (a *localAuth) fromInstance(ci *connInfo) bool {
	ci.once.Do(func() {
		ci.fromInstance = a.peers.IsInstancePeer(ci.local, ci.remote)
		if ci.fromInstance {
			a.log.Warn("request from a function instance treated as anonymous: functions get identities with mTLS, not yet configured", "remote", ci.remote)
		}
	})
	return ci.fromInstance
}

func (a *localAuth) Authenticate(r *http.Request) (gateway.Caller, error) {
	ci, ok := r.Context().Value(connKey{}).(*connInfo)
	if !ok || a.fromInstance(ci) {
		return gateway.Anonymous, nil
	}
	return a.admin.Authenticate(r)
}

func (a *localAuth) AuthenticateContext(ctx context.Context) (gateway.Caller, error) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.LocalAddr == nil || a.fromInstance(&connInfo{local: p.LocalAddr, remote: p.Addr}) {
		return gateway.Anonymous, nil
	}
	return a.admin.AuthenticateContext(ctx)
}
