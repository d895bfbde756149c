// Command caller is a function that invokes another function through the
// zfaas gateway with its own SPIFFE identity, over mutual TLS: go-spiffe's
// X509Source keeps the instance's X.509-SVID and trust bundle fresh from its
// Workload API, the client presents that SVID and accepts only a server
// whose SVID is the gateway's ($ZFAAS_GATEWAY_ID). The gateway's policy then
// decides on the caller's SPIFFE ID.
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
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
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
	src     *workloadapi.X509Source
	gateway string
	hc      *http.Client
}

func (c *caller) handle(ctx context.Context, req Request) (Response, error) {
	if req.Target == "" {
		return Response{}, errors.New(`"target" is required`)
	}
	svid, err := c.src.GetX509SVID()
	if err != nil {
		return Response{}, fmt.Errorf("X.509-SVID: %w", err)
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
	// The source reads SPIFFE_ENDPOINT_SOCKET, which zfaas sets, and keeps
	// the SVID rotated for as long as the instance lives.
	src, err := workloadapi.NewX509Source(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "workload api:", err)
		os.Exit(1)
	}
	defer src.Close()
	gatewayID, err := spiffeid.FromString(os.Getenv("ZFAAS_GATEWAY_ID"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "ZFAAS_GATEWAY_ID:", err)
		os.Exit(1)
	}
	c := &caller{
		src:     src,
		gateway: os.Getenv("ZFAAS_GATEWAY"),
		hc: &http.Client{
			Timeout:   30 * time.Second,
			Transport: &http.Transport{TLSClientConfig: tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeID(gatewayID))},
		},
	}
	lambda.Start(c.handle)
}
