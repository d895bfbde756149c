// Package identity names the workloads, nodes and people of a zfaas trust
// domain as SPIFFE IDs. Sub-packages hold the certificate authority
// (identity/ca) and the SPIFFE Workload API server (identity/workloadapi).
//
// This package only builds and checks names; it never holds keys, talks to
// the network, or imports gateway, runtime or cmd packages.
package identity
