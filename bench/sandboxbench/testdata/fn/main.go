// Command fn is the function bench/sandboxbench runs in every driver: the
// smallest useful Lambda-mode Go function (aws-lambda-go), which answers
// every event with {"ok":true}. It is built statically (CGO_ENABLED=0) so
// it also runs in a micro-VM.
package main

import (
	"context"
	"encoding/json"

	"github.com/aws/aws-lambda-go/lambda"
)

type result struct {
	OK bool `json:"ok"`
}

func handle(context.Context, json.RawMessage) (result, error) { return result{OK: true}, nil }

func main() { lambda.Start(handle) }
