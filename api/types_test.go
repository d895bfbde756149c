package api

import (
	"strings"
	"testing"
)

func TestNormalize(t *testing.T) {
	tests := []struct {
		name    string
		in      FunctionConfig
		wantErr string
		check   func(FunctionConfig) bool
	}{
		{"go defaults", FunctionConfig{Runtime: RuntimeGo}, "", func(c FunctionConfig) bool {
			return c.Handler == "bootstrap" && c.Mode == ModeLambda && c.MemoryMB == DefaultMemoryMB && c.TimeoutSeconds == DefaultTimeout
		}},
		{"provided free-form handler", FunctionConfig{Runtime: RuntimeProvided, Handler: "function.handler"}, "", nil},
		{"provided empty handler", FunctionConfig{Runtime: RuntimeProvided}, "", nil},
		{"provided handler with space", FunctionConfig{Runtime: RuntimeProvided, Handler: "a b"}, "without spaces", nil},
		{"python module.function", FunctionConfig{Runtime: RuntimePython3, Handler: "app.main"}, "", nil},
		{"python nested module", FunctionConfig{Runtime: RuntimePython3, Handler: "pkg/mod.main"}, "", nil},
		{"python without function", FunctionConfig{Runtime: RuntimePython3, Handler: "app"}, "module.function", nil},
		{"python http needs script", FunctionConfig{Runtime: RuntimePython3, Mode: ModeHTTP}, "handler is required", nil},
		{"node", FunctionConfig{Runtime: RuntimeNodejs, Handler: "index.handler"}, "", nil},
		{"no runtime", FunctionConfig{}, "runtime is required", nil},
		{"unknown runtime", FunctionConfig{Runtime: "java"}, "unknown runtime", nil},
		{"unknown mode", FunctionConfig{Runtime: RuntimeGo, Mode: "grpc"}, "unknown mode", nil},
		{"go handler escapes", FunctionConfig{Runtime: RuntimeGo, Handler: "/etc/passwd"}, "relative path", nil},
		{"memory low", FunctionConfig{Runtime: RuntimeGo, MemoryMB: 32}, "memory", nil},
		{"memory high", FunctionConfig{Runtime: RuntimeGo, MemoryMB: 20000}, "memory", nil},
		{"timeout high", FunctionConfig{Runtime: RuntimeGo, TimeoutSeconds: 901}, "timeout", nil},
		{"timeout negative", FunctionConfig{Runtime: RuntimeGo, TimeoutSeconds: -1}, "timeout", nil},
		{"concurrency negative", FunctionConfig{Runtime: RuntimeGo, MaxConcurrency: -1}, "maxConcurrency", nil},
		{"env ok", FunctionConfig{Runtime: RuntimeGo, Env: map[string]string{"A_1": "x"}}, "", nil},
		{"env bad name", FunctionConfig{Runtime: RuntimeGo, Env: map[string]string{"1A": "x"}}, "not valid", nil},
		{"env reserved", FunctionConfig{Runtime: RuntimeGo, Env: map[string]string{"AWS_LAMBDA_RUNTIME_API": "x"}}, "reserved", nil},
		{"svid dir reserved", FunctionConfig{Runtime: RuntimeGo, Env: map[string]string{"ZFAAS_SVID_DIR": "/tmp"}}, "reserved", nil},
		{"env too big", FunctionConfig{Runtime: RuntimeGo, Env: map[string]string{"A": strings.Repeat("x", MaxEnvBytes)}}, "limit", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.in
			err := c.Normalize()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("got %v, want no error", err)
				}
				if tt.check != nil && !tt.check(c) {
					t.Fatalf("got %+v after defaults", c)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestValidName(t *testing.T) {
	for name, want := range map[string]bool{
		"hello": true, "a": true, "a-b-1": true, strings.Repeat("a", 64): true,
		"": false, "-a": false, "a-": false, "A": false, "a_b": false, "a.b": false, "a:b": false,
		strings.Repeat("a", 65): false, "../x": false,
	} {
		if got := ValidName(name); got != want {
			t.Errorf("ValidName(%q) = %v, want %v", name, got, want)
		}
	}
}
