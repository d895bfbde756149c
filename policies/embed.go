// Package policies embeds the Rego policy repo shipped with zfaas (the
// zfaas/ tree next to this file), so the all-in-one platform starts with
// the default policy when no revision has been pushed yet. It holds data
// only and must never gain logic: policy is changed by editing the Rego.
package policies

import "embed"

// FS holds zfaas/**/*.rego (tests included) and zfaas/config/data.json.
//
//go:embed zfaas
var FS embed.FS
