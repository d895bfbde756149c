// Command fn is the function the sandbox conformance suite runs: a Lambda
// Runtime API client (aws-lambda-go) when AWS_LAMBDA_RUNTIME_API is set, an
// HTTP server on 127.0.0.1:$PORT otherwise. Both take the same JSON event
// and answer the same JSON result; the event's "action" picks a behaviour.
// It must be built statically (CGO_ENABLED=0) so it also runs in a
// micro-VM.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

type event struct {
	Action string   `json:"action"`
	Path   string   `json:"path,omitempty"`
	Data   string   `json:"data,omitempty"`
	Paths  []string `json:"paths,omitempty"`
	Millis int      `json:"millis,omitempty"`
	MiB    int      `json:"mib,omitempty"`
}

type result struct {
	Instance string   `json:"instance"`
	UID      int      `json:"uid"`
	Data     string   `json:"data,omitempty"`
	Exists   bool     `json:"exists,omitempty"`
	Visible  []string `json:"visible,omitempty"`
	Peers    []string `json:"peers,omitempty"`
	Procs    int      `json:"procs,omitempty"`
	Err      string   `json:"err,omitempty"`
	// Files are the SVID files read by "svidfiles" (name → content).
	Files map[string]string `json:"files,omitempty"`
}

// hold keeps allocations alive so the collector cannot return them.
var hold [][]byte

func handle(ctx context.Context, ev event) (result, error) {
	self := os.Getenv("ZFAAS_INSTANCE_ID")
	r := result{Instance: self, UID: os.Getuid()}
	switch ev.Action {
	case "", "whoami":
	case "env":
		r.Data = os.Getenv(ev.Path)
	case "sleep":
		// Deliberately ignores the deadline: the platform must enforce it.
		time.Sleep(time.Duration(ev.Millis) * time.Millisecond)
	case "crash":
		fmt.Println("crashing on purpose")
		os.Exit(3)
	case "alloc":
		// Touch every page so the memory is really charged.
		for range ev.MiB {
			b := make([]byte, 1<<20)
			for i := 0; i < len(b); i += 4096 {
				b[i] = 1
			}
			hold = append(hold, b)
		}
		r.Data = fmt.Sprintf("allocated %d MiB", len(hold))
		hold = nil
	case "write":
		if err := os.WriteFile(ev.Path, []byte(ev.Data), 0o600); err != nil {
			r.Err = err.Error()
		}
	case "read":
		b, err := os.ReadFile(ev.Path)
		r.Exists, r.Data = err == nil, string(b)
		if err != nil {
			r.Err = err.Error()
		}
	case "stat":
		for _, p := range ev.Paths {
			if _, err := os.Lstat(p); err == nil {
				r.Visible = append(r.Visible, p)
			}
		}
	case "peers":
		// Processes this instance can see that belong to another instance
		// (found by the instance id in their environment).
		ents, _ := filepath.Glob("/proc/[0-9]*")
		r.Procs = len(ents)
		for _, e := range ents {
			b, err := os.ReadFile(filepath.Join(e, "environ"))
			if err != nil {
				continue
			}
			for kv := range strings.SplitSeq(string(b), "\x00") {
				if id, ok := strings.CutPrefix(kv, "ZFAAS_INSTANCE_ID="); ok && id != self && !slices.Contains(r.Peers, id) {
					r.Peers = append(r.Peers, id)
				}
			}
		}
	case "post":
		// POST to a URL; Data is the status code, Err the failure.
		c := &http.Client{Timeout: 3 * time.Second}
		resp, err := c.Post(ev.Path, "application/json", strings.NewReader("{}"))
		if err != nil {
			r.Err = err.Error()
			break
		}
		resp.Body.Close()
		r.Data = resp.Status
	case "svid":
		// The X.509-SVID from the Workload API at SPIFFE_ENDPOINT_SOCKET.
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		svid, err := workloadapi.FetchX509SVID(ctx)
		if err != nil {
			r.Err = err.Error()
			break
		}
		r.Data = svid.ID.String()
	case "svidfiles":
		// The SVID files at ZFAAS_SVID_DIR, by their top-level names; Data
		// is the X.509-SVID's ID once its key proved to match.
		dir := os.Getenv("ZFAAS_SVID_DIR")
		if dir == "" {
			r.Err = "ZFAAS_SVID_DIR is not set"
			break
		}
		r.Files = map[string]string{}
		for _, name := range []string{"svid.pem", "svid_key.pem", "svid_bundle.pem", "jwt_svid.token", "jwt_bundle.json"} {
			b, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				r.Err = err.Error()
				return r, nil
			}
			r.Files[name] = string(b)
		}
		svid, err := x509svid.Parse([]byte(r.Files["svid.pem"]), []byte(r.Files["svid_key.pem"]))
		if err != nil {
			r.Err = err.Error()
			break
		}
		r.Data = svid.ID.String()
	default:
		return r, fmt.Errorf("unknown action %q", ev.Action)
	}
	return r, nil
}

func main() {
	if os.Getenv("AWS_LAMBDA_RUNTIME_API") != "" {
		lambda.Start(handle)
		return
	}
	http.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
		var ev event
		if err := json.NewDecoder(http.MaxBytesReader(w, req.Body, 1<<20)).Decode(&ev); err != nil {
			http.Error(w, "bad event", http.StatusBadRequest)
			return
		}
		r, err := handle(req.Context(), ev)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(r)
	})
	srv := &http.Server{Addr: "127.0.0.1:" + os.Getenv("PORT"), ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintln(os.Stderr, srv.ListenAndServe())
	os.Exit(1)
}
