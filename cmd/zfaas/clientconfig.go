package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"gopkg.in/yaml.v3"
)

// clientConfig is what the CLI needs to reach the platform. `zfaas up`
// writes it (0600) so the CLI on the same machine works without flags.
type clientConfig struct {
	Gateway string `yaml:"gateway"`
}

func clientConfigPath(getenv env) (string, error) {
	if p := getenv("ZFAAS_CLIENT_CONFIG"); p != "" {
		return p, nil
	}
	dir := getenv("XDG_CONFIG_HOME")
	if dir == "" {
		home := getenv("HOME")
		if home == "" {
			return "", errors.New("neither XDG_CONFIG_HOME nor HOME is set")
		}
		dir = filepath.Join(home, ".config")
	}
	return filepath.Join(dir, "zfaas", "config.yaml"), nil
}

func writeClientConfig(path string, getenv env, c clientConfig) (string, error) {
	if path == "" {
		var err error
		if path, err = clientConfigPath(getenv); err != nil {
			return "", err
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	raw, err := yaml.Marshal(c)
	if err != nil {
		return "", err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return "", err
	}
	return path, os.Rename(tmp, path)
}

// readClientConfig returns the config, or a zero one when none exists.
func readClientConfig(getenv env) (clientConfig, error) {
	var c clientConfig
	path, err := clientConfigPath(getenv)
	if err != nil {
		return c, nil
	}
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("client config %s: %w", path, err)
	}
	return c, nil
}
