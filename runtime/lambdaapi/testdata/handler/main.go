// Command handler is a Lambda function built with the real aws-lambda-go
// client, used by the lambdaapi tests. What it does is chosen by the event's
// "action" and, at start-up, by the HANDLER_INIT variable.
package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"
)

type request struct {
	Action  string `json:"action"`
	Name    string `json:"name"`
	Size    int    `json:"size"`
	SleepMS int    `json:"sleepMs"`
}

type response struct {
	Message      string `json:"message,omitempty"`
	RequestID    string `json:"requestId"`
	FunctionName string `json:"functionName"`
	MemoryMB     int    `json:"memoryMB"`
	ARN          string `json:"arn,omitempty"`
	ClientApp    string `json:"clientApp,omitempty"`
	Custom       string `json:"custom,omitempty"`
	DeadlineMS   int64  `json:"deadlineMs"`
	RemainingMS  int64  `json:"remainingMs"`
	Data         string `json:"data,omitempty"`
}

type validationError struct{ msg string }

func (e *validationError) Error() string { return e.msg }

func handle(ctx context.Context, req request) (*response, error) {
	lc, _ := lambdacontext.FromContext(ctx)
	dl, _ := ctx.Deadline()
	resp := &response{
		RequestID:    lc.AwsRequestID,
		FunctionName: lambdacontext.FunctionName,
		MemoryMB:     lambdacontext.MemoryLimitInMB,
		ARN:          lc.InvokedFunctionArn,
		ClientApp:    lc.ClientContext.Client.AppTitle,
		Custom:       lc.ClientContext.Custom["k"],
		DeadlineMS:   dl.UnixMilli(),
		RemainingMS:  time.Until(dl).Milliseconds(),
	}
	switch req.Action {
	case "error":
		return nil, &validationError{msg: "name is required"}
	case "panic":
		panic("boom")
	case "big":
		resp.Data = strings.Repeat("x", req.Size)
	case "sleep":
		select {
		case <-time.After(time.Duration(req.SleepMS) * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	resp.Message = "Hello, " + req.Name + "!"
	return resp, nil
}

func main() {
	switch os.Getenv("HANDLER_INIT") {
	case "exit":
		fmt.Fprintln(os.Stderr, "init: cannot load configuration")
		os.Exit(3)
	case "post":
		// What a custom runtime does when its set-up fails.
		url := "http://" + os.Getenv("AWS_LAMBDA_RUNTIME_API") + "/2018-06-01/runtime/init/error"
		body := `{"errorMessage":"cannot load configuration","errorType":"ConfigError","stackTrace":["main.go:1"]}`
		req, _ := http.NewRequest(http.MethodPost, url, bytes.NewBufferString(body))
		req.Header.Set("Lambda-Runtime-Function-Error-Type", "Runtime.ConfigError")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			fmt.Fprintln(os.Stderr, "post init error:", err)
			os.Exit(2)
		}
		resp.Body.Close()
		fmt.Fprintln(os.Stderr, "posted init error:", resp.Status)
		os.Exit(1)
	}
	lambda.Start(handle)
}
