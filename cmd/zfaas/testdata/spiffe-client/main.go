// Command spiffe-client is a Lambda-mode function for the end-to-end tests,
// using the unmodified go-spiffe Workload API client (which reads
// SPIFFE_ENDPOINT_SOCKET). With an empty event it replies
// "X509 ID|JWT ID|entries of /run/spiffe|instance id". With
// {"call": "NAME"} it invokes function NAME through the gateway
// ($ZFAAS_GATEWAY, over TLS that verifies the gateway's SPIFFE ID
// $ZFAAS_GATEWAY_ID against the bundle from the Workload API, without a
// client certificate) with its own JWT-SVID for $ZFAAS_GATEWAY_AUDIENCE (or
// "audience" from the event; "token": "none" sends no token) and replies
// "STATUS|BODY". It is separate from the fixture so the fixture stays small
// enough for the package-limit tests.
package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

type event struct {
	Call     string `json:"call"`
	Audience string `json:"audience"`
	Token    string `json:"token"`
}

func handle(ctx context.Context, ev event) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if ev.Call != "" {
		return call(ctx, ev)
	}
	x, err := workloadapi.FetchX509SVID(ctx)
	if err != nil {
		return "", err
	}
	j, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "zfaas-test"})
	if err != nil {
		return "", err
	}
	ents, err := os.ReadDir("/run/spiffe")
	if err != nil {
		return "", err
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return x.ID.String() + "|" + j.ID.String() + "|" + strings.Join(names, ",") + "|" + os.Getenv("ZFAAS_INSTANCE_ID"), nil
}

// call invokes another function through the gateway with this instance's
// own JWT-SVID.
func call(ctx context.Context, ev event) (string, error) {
	aud := ev.Audience
	if aud == "" {
		aud = os.Getenv("ZFAAS_GATEWAY_AUDIENCE")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, os.Getenv("ZFAAS_GATEWAY")+"/v1/functions/"+ev.Call+"/invoke", bytes.NewReader([]byte(`{"name":"peer"}`)))
	if err != nil {
		return "", err
	}
	if ev.Token != "none" {
		svid, err := workloadapi.FetchJWTSVID(ctx, jwtsvid.Params{Audience: aud})
		if err != nil {
			return "", err
		}
		req.Header.Set("Authorization", "Bearer "+svid.Marshal())
	}
	gw, err := spiffeid.FromString(os.Getenv("ZFAAS_GATEWAY_ID"))
	if err != nil {
		return "", err
	}
	bundles, err := workloadapi.NewBundleSource(ctx)
	if err != nil {
		return "", err
	}
	defer bundles.Close()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsconfig.TLSClientConfig(bundles, tlsconfig.AuthorizeID(gw))}}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return fmt.Sprintf("%d|%s", resp.StatusCode, body), nil
}

func main() { lambda.Start(handle) }
