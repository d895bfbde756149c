package api

import (
	"fmt"
	"regexp"
	"time"
)

// Runtime names the language runtime a function version runs on.
type Runtime string

// Supported runtimes.
const (
	// RuntimeProvided runs the package's "bootstrap" executable, as Lambda's
	// custom runtimes do; the handler is free-form and only passed on in
	// $_HANDLER.
	RuntimeProvided Runtime = "provided"
	// RuntimeGo runs the Go executable the handler names (default
	// "bootstrap"), as Lambda's go1.x did.
	RuntimeGo Runtime = "go"
	// RuntimePython3 runs "module.function" handlers with the host's python3
	// through zfaas's bundled bootstrap.
	RuntimePython3 Runtime = "python3"
	// RuntimeNodejs runs "module.function" handlers with the host's node
	// through zfaas's bundled bootstrap.
	RuntimeNodejs Runtime = "nodejs"
)

// Valid reports whether r is a runtime zfaas knows.
func (r Runtime) Valid() bool {
	switch r {
	case RuntimeProvided, RuntimeGo, RuntimePython3, RuntimeNodejs:
		return true
	}
	return false
}

// Mode is how the gateway talks to a function instance.
type Mode string

// Function modes.
const (
	// ModeLambda: the function pulls events through the AWS Lambda Runtime API.
	ModeLambda Mode = "lambda"
	// ModeHTTP: the function serves HTTP on the port in $PORT and requests are
	// proxied to it.
	ModeHTTP Mode = "http"
)

// ProvidedExecutable is the file a "provided" runtime package must hold.
const ProvidedExecutable = "bootstrap"

// Limits on function configuration values.
const (
	MinMemoryMB       = 64
	MaxMemoryMB       = 10240
	DefaultMemoryMB   = 128
	MaxTimeoutSeconds = 900
	DefaultTimeout    = 30
	MaxEnvBytes       = 4096
)

// FunctionConfig is the user-settable part of a function version.
type FunctionConfig struct {
	Runtime        Runtime           `json:"runtime"`
	Handler        string            `json:"handler,omitempty"`
	Mode           Mode              `json:"mode"`
	MemoryMB       int               `json:"memoryMB"`
	TimeoutSeconds int               `json:"timeoutSeconds"`
	Env            map[string]string `json:"env,omitempty"`
	// MaxConcurrency caps the instances (and so the in-flight invocations)
	// of each version of the function; 0 means the gateway's default.
	MaxConcurrency int `json:"maxConcurrency,omitempty"`
}

var envKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// reservedEnv are variables zfaas sets for the runtime and users may not override.
var reservedEnv = map[string]bool{
	"AWS_LAMBDA_RUNTIME_API": true, "PORT": true, "_HANDLER": true,
	"LAMBDA_TASK_ROOT": true, "AWS_LAMBDA_FUNCTION_NAME": true,
	"AWS_LAMBDA_FUNCTION_VERSION": true, "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": true,
	"SPIFFE_ENDPOINT_SOCKET": true, "PATH": true, "HOME": true,
	"AWS_LAMBDA_LOG_GROUP_NAME": true, "AWS_LAMBDA_LOG_STREAM_NAME": true,
	"AWS_LAMBDA_INITIALIZATION_TYPE": true, "LAMBDA_RUNTIME_DIR": true,
	"ZFAAS_TENANT": true, "ZFAAS_INSTANCE_ID": true, "TMPDIR": true,
	"ZFAAS_GATEWAY": true, "ZFAAS_GATEWAY_AUDIENCE": true,
	"ZFAAS_GATEWAY_ID": true, "ZFAAS_GATEWAY_GRPC": true, "ZFAAS_SVID_DIR": true,
}

// Normalize fills defaults and validates c. It returns a descriptive error
// suitable for showing to the user.
func (c *FunctionConfig) Normalize() error {
	if c.Runtime == "" {
		return fmt.Errorf("runtime is required (provided, go, python3 or nodejs)")
	}
	if !c.Runtime.Valid() {
		return fmt.Errorf("unknown runtime %q (want provided, go, python3 or nodejs)", c.Runtime)
	}
	if c.Mode == "" {
		c.Mode = ModeLambda
	}
	if c.Mode != ModeLambda && c.Mode != ModeHTTP {
		return fmt.Errorf("unknown mode %q (want lambda or http)", c.Mode)
	}
	switch c.Runtime {
	case RuntimeProvided:
		if !freeHandlerRE.MatchString(c.Handler) {
			return fmt.Errorf("handler %q must be at most 128 characters without spaces", c.Handler)
		}
	case RuntimeGo:
		if c.Handler == "" {
			c.Handler = "bootstrap"
		}
		if !handlerFileRE.MatchString(c.Handler) {
			return fmt.Errorf("handler %q must be a relative path of the executable in the package", c.Handler)
		}
	case RuntimePython3, RuntimeNodejs:
		if c.Mode == ModeHTTP {
			if c.Handler == "" {
				return fmt.Errorf("handler is required: the script that serves HTTP")
			}
			if !handlerFileRE.MatchString(c.Handler) {
				return fmt.Errorf("handler %q must be a relative path of the script in the package", c.Handler)
			}
			break
		}
		if !moduleHandlerRE.MatchString(c.Handler) {
			return fmt.Errorf("handler %q must look like module.function", c.Handler)
		}
	}
	if c.MemoryMB == 0 {
		c.MemoryMB = DefaultMemoryMB
	}
	if c.MemoryMB < MinMemoryMB || c.MemoryMB > MaxMemoryMB {
		return fmt.Errorf("memory %d MB out of range [%d, %d]", c.MemoryMB, MinMemoryMB, MaxMemoryMB)
	}
	if c.TimeoutSeconds == 0 {
		c.TimeoutSeconds = DefaultTimeout
	}
	if c.TimeoutSeconds < 1 || c.TimeoutSeconds > MaxTimeoutSeconds {
		return fmt.Errorf("timeout %ds out of range [1, %d]", c.TimeoutSeconds, MaxTimeoutSeconds)
	}
	if c.MaxConcurrency < 0 || c.MaxConcurrency > 10000 {
		return fmt.Errorf("maxConcurrency %d out of range [0, 10000]", c.MaxConcurrency)
	}
	n := 0
	for k, v := range c.Env {
		if !envKeyRE.MatchString(k) {
			return fmt.Errorf("environment variable name %q is not valid", k)
		}
		if reservedEnv[k] {
			return fmt.Errorf("environment variable %s is reserved", k)
		}
		n += len(k) + len(v)
	}
	if n > MaxEnvBytes {
		return fmt.Errorf("environment is %d bytes, over the %d byte limit", n, MaxEnvBytes)
	}
	return nil
}

var (
	freeHandlerRE   = regexp.MustCompile(`^[^\s]{0,128}$`)
	handlerFileRE   = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_./-]{0,127}$`)
	moduleHandlerRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_/.-]{0,127}\.[A-Za-z_$][A-Za-z0-9_$]{0,63}$`)
	nameRE          = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$`)
)

// ValidName reports whether s may name a function, alias or tenant: 1–64
// lower-case letters, digits and inner hyphens.
func ValidName(s string) bool { return nameRE.MatchString(s) }

// Function is a named function and its mutable pointers.
type Function struct {
	Tenant        string           `json:"tenant"`
	Name          string           `json:"name"`
	LatestVersion int64            `json:"latestVersion"`
	Aliases       map[string]Alias `json:"aliases,omitempty"`
	CreatedAt     time.Time        `json:"createdAt"`
	UpdatedAt     time.Time        `json:"updatedAt"`
	// Revision is the store revision the record was read at (for CAS).
	Revision uint64 `json:"revision,omitempty"`
}

// Version is one immutable published version of a function.
type Version struct {
	Tenant        string         `json:"tenant"`
	Function      string         `json:"function"`
	Version       int64          `json:"version"`
	Config        FunctionConfig `json:"config"`
	PackageDigest string         `json:"packageDigest"`
	PackageSize   int64          `json:"packageSize"`
	Description   string         `json:"description,omitempty"`
	CreatedAt     time.Time      `json:"createdAt"`
}

// Alias points at a version, optionally splitting traffic with a second one.
type Alias struct {
	Name    string `json:"name"`
	Version int64  `json:"version"`
	// AdditionalVersion, when non-zero, receives AdditionalWeight of calls.
	AdditionalVersion int64   `json:"additionalVersion,omitempty"`
	AdditionalWeight  float64 `json:"additionalWeight,omitempty"`
}

// ErrorBody is the stable JSON error envelope every zfaas API returns.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the machine-readable code and human message of an error.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// DecisionID names the policy decision behind a 403, when there is one.
	DecisionID string `json:"decisionId,omitempty"`
}

// FunctionError is the body of a 502 when the function itself failed, in
// Lambda's shape.
type FunctionError struct {
	ErrorType    string   `json:"errorType"`
	ErrorMessage string   `json:"errorMessage"`
	StackTrace   []string `json:"stackTrace,omitempty"`
}

// Invocation response headers.
const (
	HeaderInvocationID   = "X-Zfaas-Invocation-Id"
	HeaderDuration       = "X-Zfaas-Duration-Ms"
	HeaderBilledDuration = "X-Zfaas-Billed-Duration-Ms"
	HeaderColdStart      = "X-Zfaas-Cold-Start"
	HeaderVersion        = "X-Zfaas-Function-Version"
	HeaderFunctionError  = "X-Zfaas-Function-Error"
	HeaderDecisionID     = "X-Zfaas-Decision-Id"
)
