package gateway

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/zfaas/zfaas/api"
	zfaasv1 "github.com/zfaas/zfaas/api/zfaas/v1"
	"github.com/zfaas/zfaas/crypto/dualstack"
)

// grpcServer implements zfaas.v1.Functions on the gateway.
type grpcServer struct {
	zfaasv1.UnimplementedFunctionsServer
	g *Gateway
}

// RegisterGRPC registers the gateway's gRPC services on s.
func (g *Gateway) RegisterGRPC(s *grpc.Server) {
	zfaasv1.RegisterFunctionsServer(s, &grpcServer{g: g})
}

// GRPCMaxMessageBytes is the receive limit the gRPC server should use: the
// invocation payload limit plus framing.
func (g *Gateway) GRPCMaxMessageBytes() int { return int(g.cfg.MaxPayloadBytes) + 64<<10 }

func (s *grpcServer) Invoke(ctx context.Context, req *zfaasv1.InvokeRequest) (*zfaasv1.InvokeResponse, error) {
	caller, err := s.g.cfg.GRPCAuthenticator.AuthenticateContext(ctx)
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, "credentials could not be verified")
	}
	name, qualifier := req.GetFunction(), req.GetQualifier()
	if qualifier == "" {
		name, qualifier, _ = strings.Cut(name, ":")
	}
	if name == "" {
		return nil, status.Error(codes.InvalidArgument, "function is required")
	}
	if int64(len(req.GetPayload())) > s.g.cfg.MaxPayloadBytes {
		return nil, status.Error(codes.ResourceExhausted, "payload over the limit")
	}
	hdr := map[string]any{}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		for k, vs := range md {
			hdr[strings.ToLower(k)] = strings.Join(vs, ", ")
		}
	}
	proto, suite := secureState(dualstack.StateFromPeer(ctx))
	request := map[string]any{
		"protocol": "grpc", "method": "POST", "path": zfaasv1.Functions_Invoke_FullMethodName,
		"headers": hdr, "tls": map[string]any{"protocol": proto, "cipher_suite": suite}, "trace_id": "",
	}
	o, err := s.g.invoke(ctx, invocation{name: name, qualifier: qualifier, payload: req.GetPayload(), caller: caller, request: request})
	if err != nil {
		var de *deniedError
		if errors.As(err, &de) {
			return nil, status.Errorf(codes.PermissionDenied, "denied by policy (decision %s)", de.d.ID)
		}
		var ie *api.InitError
		switch {
		case errors.As(err, &ie):
			return &zfaasv1.InvokeResponse{InvocationId: o.id, Version: o.version.Version, FunctionError: &zfaasv1.FunctionError{ErrorType: ie.FuncErr.ErrorType, ErrorMessage: ie.FuncErr.ErrorMessage}}, nil
		case errors.Is(err, api.ErrCrashed):
			return &zfaasv1.InvokeResponse{InvocationId: o.id, Version: o.version.Version, FunctionError: &zfaasv1.FunctionError{ErrorType: "Runtime.ExitError", ErrorMessage: "the function's instance exited during the invocation; it was replaced"}}, nil
		case errors.Is(err, api.ErrResponseTooLarge):
			return &zfaasv1.InvokeResponse{InvocationId: o.id, Version: o.version.Version, FunctionError: &zfaasv1.FunctionError{ErrorType: "Function.ResponseSizeTooLarge", ErrorMessage: "the function's response is over the limit"}}, nil
		}
		st, code, msg := s.g.classify(err)
		if st >= 500 && st != http.StatusGatewayTimeout {
			s.g.log.Error("grpc invoke failed", "function", name, "err", err)
		}
		return nil, status.Error(grpcCode(st, code), msg)
	}
	resp := &zfaasv1.InvokeResponse{
		InvocationId:     o.id,
		Version:          o.version.Version,
		Payload:          o.res.Payload,
		ColdStart:        o.res.ColdStart,
		DurationMs:       o.res.Duration.Milliseconds(),
		BilledDurationMs: billed(o.res.Duration),
	}
	if fe := o.res.FuncErr; fe != nil {
		resp.FunctionError = &zfaasv1.FunctionError{ErrorType: fe.ErrorType, ErrorMessage: fe.ErrorMessage, StackTrace: fe.StackTrace}
	}
	return resp, nil
}

func grpcCode(httpStatus int, code string) codes.Code {
	switch httpStatus {
	case http.StatusBadRequest:
		return codes.InvalidArgument
	case http.StatusNotFound:
		return codes.NotFound
	case http.StatusForbidden:
		return codes.PermissionDenied
	case http.StatusRequestEntityTooLarge, http.StatusTooManyRequests:
		return codes.ResourceExhausted
	case http.StatusGatewayTimeout:
		return codes.DeadlineExceeded
	case http.StatusConflict:
		return codes.Aborted
	}
	if code == CodeUnavailable {
		return codes.Unavailable
	}
	return codes.Internal
}
