// Command spiffe-client is a Lambda-mode function for the end-to-end tests:
// it fetches its SVIDs with the unmodified go-spiffe Workload API client
// (which reads SPIFFE_ENDPOINT_SOCKET) and replies
// "X509 ID|JWT ID|entries of /run/spiffe|instance id". It is separate from
// the fixture so the fixture stays small enough for the package-limit tests.
package main

import (
	"context"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func handle(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
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

func main() { lambda.Start(handle) }
