// Command hello is the smallest zfaas function: a Go program using the
// unmodified aws-lambda-go client. It answers {"name":"x"} with
// {"message":"Hello, x!"}. The greeting word comes from $GREETING
// (default "Hello"), to show configuration through --env.
//
// Deploy it with runtime "go" and handler "bootstrap" (the binary's name in
// the package).
package main

import (
	"context"
	"os"

	"github.com/aws/aws-lambda-go/lambda"
)

// Request is the event the function expects.
type Request struct {
	Name string `json:"name"`
}

// Response is what the function returns.
type Response struct {
	Message string `json:"message"`
}

func handle(_ context.Context, req Request) (Response, error) {
	name := req.Name
	if name == "" {
		name = "world"
	}
	greeting := os.Getenv("GREETING")
	if greeting == "" {
		greeting = "Hello"
	}
	return Response{Message: greeting + ", " + name + "!"}, nil
}

func main() {
	lambda.Start(handle)
}
