// Package decisionapi serves the zfaas.policyd.v1.Decisions gRPC service:
// policy decisions for processes that do not run the engine in-process.
//
// Errors carry gRPC codes and generic messages only; the detail goes to the
// log. It must never answer allow = true for a decision the engine denied
// or failed.
package decisionapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	policydv1 "github.com/zfaas/zfaas/api/policyd/v1"
	"github.com/zfaas/zfaas/policyd"
)

// Decider evaluates an entry point; *policyd.Engine implements it.
type Decider interface {
	Decide(ctx context.Context, entry string, input map[string]any) (policyd.Decision, error)
}

var _ Decider = (*policyd.Engine)(nil)

// Server implements policydv1.DecisionsServer. It is safe for concurrent
// use.
type Server struct {
	policydv1.UnimplementedDecisionsServer
	d   Decider
	log *slog.Logger
}

// New returns a Server deciding with d. log nil discards.
func New(d Decider, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{d: d, log: log.With("component", "decisionapi")}
}

// Register registers the Decisions service on g.
func (s *Server) Register(g *grpc.Server) { policydv1.RegisterDecisionsServer(g, s) }

// Decide evaluates one entry point.
func (s *Server) Decide(ctx context.Context, req *policydv1.DecideRequest) (*policydv1.DecideResponse, error) {
	input := map[string]any{}
	switch in := req.GetInput().(type) {
	case *policydv1.DecideRequest_InputStruct:
		input = in.InputStruct.AsMap()
	case *policydv1.DecideRequest_InputJson:
		dec := json.NewDecoder(bytes.NewReader(in.InputJson))
		dec.UseNumber()
		if err := dec.Decode(&input); err != nil || dec.More() || input == nil {
			return nil, status.Error(codes.InvalidArgument, "input_json must be a JSON object")
		}
	}
	d, err := s.d.Decide(ctx, req.GetEntry(), input)
	if err != nil {
		switch {
		case errors.Is(err, policyd.ErrUnknownEntry):
			return nil, status.Error(codes.InvalidArgument, "unknown entry point")
		case errors.Is(err, policyd.ErrNoPolicy):
			return nil, status.Error(codes.Unavailable, "no policy revision is loaded")
		case errors.Is(err, context.DeadlineExceeded):
			return nil, status.Error(codes.DeadlineExceeded, "policy evaluation timed out")
		case errors.Is(err, context.Canceled):
			return nil, status.Error(codes.Canceled, "cancelled")
		}
		s.log.Error("decision failed", "entry", req.GetEntry(), "decision_id", d.ID, "err", err)
		return nil, status.Error(codes.Internal, "policy evaluation failed")
	}
	return &policydv1.DecideResponse{DecisionId: d.ID, Revision: d.Revision, Allow: d.Allow, Reasons: d.Reasons}, nil
}
