// Command fn is the test function run inside micro-VMs.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"syscall"
)

func main() {
	switch os.Args[1] {
	case "hello":
		fmt.Println("hello from the guest", os.Getenv("GREETING"))
		fmt.Fprintln(os.Stderr, "to stderr")
	case "get":
		resp, err := http.Get("http://" + os.Getenv("AWS_LAMBDA_RUNTIME_API") + "/ping")
		if err != nil {
			fmt.Println("get:", err)
			os.Exit(3)
		}
		b, _ := io.ReadAll(resp.Body)
		fmt.Printf("got %d %s\n", resp.StatusCode, b)
	case "serve":
		http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "served %s from the guest", r.URL.Path)
		})
		fmt.Println(http.ListenAndServe("127.0.0.1:"+os.Getenv("PORT"), nil))
	case "exit":
		os.Exit(7)
	case "limits":
		// The limits the guest applied, as the function sees them.
		var rl syscall.Rlimit
		_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
		var st syscall.Statfs_t
		_ = syscall.Statfs("/tmp", &st)
		cg, _ := os.ReadFile("/proc/self/cgroup")
		dir := "/sys/fs/cgroup" + strings.TrimPrefix(strings.TrimSpace(string(cg)), "0::")
		mem, _ := os.ReadFile(dir + "/memory.max")
		pids, _ := os.ReadFile(dir + "/pids.max")
		fmt.Printf("nofile=%d tmp=%d cgroup=%s memory=%s pids=%s\n", rl.Cur, st.Blocks*uint64(st.Bsize),
			strings.TrimPrefix(dir, "/sys/fs/cgroup"), strings.TrimSpace(string(mem)), strings.TrimSpace(string(pids)))
	}
}
