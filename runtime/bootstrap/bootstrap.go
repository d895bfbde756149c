// Package bootstrap holds zfaas's runtime bootstraps: the small programs
// that run Python and Node.js "module.function" handlers over the AWS Lambda
// Runtime API (served by package lambdaapi).
//
// The worker writes them once with WriteTo and mounts the directory
// read-only at sandbox.RuntimeRoot (/opt/zfaas) in every instance, then runs
// e.g. "/usr/bin/python3 /opt/zfaas/python/bootstrap.py" with _HANDLER,
// LAMBDA_TASK_ROOT, AWS_LAMBDA_RUNTIME_API and the AWS_LAMBDA_FUNCTION_*
// variables set, in the task root. The bootstraps use only their language's
// standard library. This package never runs them and never writes outside
// the directory it is given.
package bootstrap

import (
	"embed"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
)

// Paths of the bootstraps relative to the directory WriteTo writes (and so
// to sandbox.RuntimeRoot), slash-separated.
const (
	// PythonPath is the Python bootstrap, run as "python3 <root>/PythonPath".
	PythonPath = "python/bootstrap.py"
	// NodejsPath is the Node.js bootstrap, run as "node <root>/NodejsPath".
	NodejsPath = "nodejs/bootstrap.js"
)

//go:embed python/bootstrap.py nodejs/bootstrap.js
var files embed.FS

// File returns the content of the bootstrap at name (PythonPath or
// NodejsPath).
func File(name string) ([]byte, error) {
	b, err := files.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: %w", err)
	}
	return b, nil
}

// WriteTo writes every bootstrap under dir, creating dir and its
// subdirectories (mode 0755) as needed. Scripts are written 0755, other files
// 0644, whatever the umask; existing files are replaced atomically, so an
// instance reading an older copy is not disturbed.
func WriteTo(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("bootstrap: create %s: %w", dir, err)
	}
	return fs.WalkDir(files, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		target := filepath.Join(dir, filepath.FromSlash(name))
		if d.IsDir() {
			if err := os.MkdirAll(target, 0o755); err != nil {
				return fmt.Errorf("bootstrap: create %s: %w", target, err)
			}
			return os.Chmod(target, 0o755)
		}
		b, err := files.ReadFile(name)
		if err != nil {
			return fmt.Errorf("bootstrap: %w", err)
		}
		return writeFile(target, b, fileMode(name))
	})
}

// fileMode is 0755 for the bootstrap scripts (they carry a #! line), 0644
// for anything else.
func fileMode(name string) fs.FileMode {
	switch path.Ext(name) {
	case ".py", ".js", ".mjs", ".cjs", ".sh":
		return 0o755
	}
	return 0o644
}

// writeFile writes b to name through a temporary file and a rename.
func writeFile(name string, b []byte, mode fs.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(name), ".tmp-"+filepath.Base(name)+"-*")
	if err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, name)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("bootstrap: write %s: %w", name, err)
	}
	return nil
}
