package api

// EgressView is what GET /v1/functions/{name}/egress shows: the rules the
// active policy revision gives the function, and the kernel rules in force
// for each of its running instances on this worker.
type EgressView struct {
	Function string `json:"function"`
	// Revision is the policy revision Rules come from.
	Revision int64 `json:"revision"`
	// Rules are data.zfaas.egress.rules for the function (valid ones).
	Rules []map[string]any `json:"rules"`
	// Instances are the running instances and their rules in force, one
	// "proto prefix/port [sni=…]" line per kernel rule (host names
	// resolved; the platform's own addresses included).
	Instances []EgressInstance `json:"instances"`
}

// EgressInstance is one instance's rules in force.
type EgressInstance struct {
	Instance string   `json:"instance"`
	Revision string   `json:"revision"`
	InForce  []string `json:"in_force"`
}
