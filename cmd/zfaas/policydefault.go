package main

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"strings"
	"testing/fstest"

	"github.com/zfaas/zfaas/policies"
)

// shippedTrustDomain is the trust domain the shipped policy data names.
const shippedTrustDomain = "zfaas.local"

// defaultPolicy returns the shipped policy for a platform whose trust
// domain is td: the embedded policies, with data.zfaas.config's trust_domain
// and the admins of the shipped trust domain moved to td. A pushed revision
// replaces it entirely.
func defaultPolicy(td string) (fs.FS, error) {
	if td == shippedTrustDomain {
		return policies.FS, nil
	}
	const dataPath = "zfaas/config/data.json"
	out := fstest.MapFS{}
	err := fs.WalkDir(policies.FS, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(policies.FS, path)
		if err != nil {
			return err
		}
		out[path] = &fstest.MapFile{Data: b, Mode: 0o444}
		return nil
	})
	if err != nil {
		return nil, err
	}
	f, ok := out[dataPath]
	if !ok {
		return nil, fmt.Errorf("shipped policy has no %s", dataPath)
	}
	var data map[string]any
	if err := json.Unmarshal(f.Data, &data); err != nil {
		return nil, fmt.Errorf("shipped %s: %w", dataPath, err)
	}
	data["trust_domain"] = td
	if admins, ok := data["admins"].([]any); ok {
		for i, a := range admins {
			if s, ok := a.(string); ok {
				if rest, ok := strings.CutPrefix(s, "spiffe://"+shippedTrustDomain+"/"); ok {
					admins[i] = "spiffe://" + td + "/" + rest
				}
			}
		}
	}
	b, err := json.MarshalIndent(data, "", "  ")
	if err != nil {
		return nil, err
	}
	out[dataPath] = &fstest.MapFile{Data: b, Mode: 0o444}
	return out, nil
}
