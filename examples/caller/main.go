// Command caller is a function that invokes another function through the
// zfaas gateway with its own SPIFFE identity: it fetches a JWT-SVID for the
// gateway's audience from its Workload API (go-spiffe's JWTSource, which
// keeps the token fresh) and sends it as a bearer token. The gateway's
// policy then decides on the caller's SPIFFE ID.
//
// Event: {"target": "hello", "payload": {"name": "x"}} → the target's answer.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// Request names the function to call and what to send it.
type Request struct {
	Target  string          `json:"target"`
	Payload json.RawMessage `json:"payload"`
}

// Response is the callee's answer and who called it.
type Response struct {
	Caller string          `json:"caller"`
	Status int             `json:"status"`
	Answer json.RawMessage `json:"answer"`
}

type caller struct {
	jwt      *workloadapi.JWTSource
	gateway  string
	audience string
	hc       *http.Client
}

func (c *caller) handle(ctx context.Context, req Request) (Response, error) {
	if req.Target == "" {
		return Response{}, errors.New(`"target" is required`)
	}
	svid, err := c.jwt.FetchJWTSVID(ctx, jwtsvid.Params{Audience: c.audience})
	if err != nil {
		return Response{}, fmt.Errorf("fetch JWT-SVID: %w", err)
	}
	payload := req.Payload
	if len(payload) == 0 {
		payload = json.RawMessage("{}")
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, c.gateway+"/v1/functions/"+url.PathEscape(req.Target)+"/invoke", bytes.NewReader(payload))
	if err != nil {
		return Response{}, err
	}
	hr.Header.Set("Content-Type", "application/json")
	hr.Header.Set("Authorization", "Bearer "+svid.Marshal())
	resp, err := c.hc.Do(hr)
	if err != nil {
		return Response{}, fmt.Errorf("call %s: %w", req.Target, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 6<<20))
	if err != nil {
		return Response{}, err
	}
	if !json.Valid(body) {
		body, _ = json.Marshal(string(body))
	}
	return Response{Caller: svid.ID.String(), Status: resp.StatusCode, Answer: body}, nil
}

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The source reads SPIFFE_ENDPOINT_SOCKET, which zfaas sets.
	src, err := workloadapi.NewJWTSource(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "workload api:", err)
		os.Exit(1)
	}
	defer src.Close()
	c := &caller{
		jwt:      src,
		gateway:  os.Getenv("ZFAAS_GATEWAY"),
		audience: os.Getenv("ZFAAS_GATEWAY_AUDIENCE"),
		hc:       &http.Client{Timeout: 30 * time.Second},
	}
	lambda.Start(c.handle)
}
