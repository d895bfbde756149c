// Command fn is the test function run inside micro-VMs.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
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
	}
}
