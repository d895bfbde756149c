// Command svidfn is the test function that fetches its X.509-SVID from
// the Workload API inside a micro-VM (SPIFFE_ENDPOINT_SOCKET) and prints
// the SPIFFE ID, the way a function using go-spiffe would.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svid, err := workloadapi.FetchX509SVID(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fetch x509-svid:", err)
		os.Exit(3)
	}
	fmt.Println(svid.ID)
}
